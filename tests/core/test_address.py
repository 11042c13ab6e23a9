"""``Address``: parsed once where the text enters, shown back as it was written."""

from __future__ import annotations

import pytest

from mcp_supervisor.core import Address


@pytest.mark.parametrize(
    ("text", "host", "port", "path", "loopback"),
    [
        ("127.0.0.1:7080", "127.0.0.1", 7080, "", True),
        ("localhost:80", "localhost", 80, "", True),
        ("[::1]:9000", "::1", 9000, "", True),
        ("0.0.0.0:7080", "0.0.0.0", 7080, "", False),
        ("unix:/run/mcp/admin.sock", "", 0, "/run/mcp/admin.sock", True),
    ],
)
def test_parse_and_show(text: str, host: str, port: int, path: str, loopback: bool) -> None:
    addr = Address.parse(text)
    assert (addr.host, addr.port, addr.path, addr.loopback) == (host, port, path, loopback)
    assert str(addr) == text
    assert Address.parse(str(addr)) == addr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("7080", 'must be "host:port" or "unix:/absolute/path"'),
        (":7080", 'must be "host:port" or "unix:/absolute/path"'),
        ("127.0.0.1:0", "port must be 1..65535"),
        ("127.0.0.1:65536", "port must be 1..65535"),
        ("127.0.0.1:http", "port must be 1..65535"),
        ("unix:relative.sock", "a unix socket needs an absolute path of at most 107 bytes"),
        ("unix:/" + "x" * 107, "a unix socket needs an absolute path of at most 107 bytes"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        Address.parse(text)


def test_host_headers_and_urls() -> None:
    tcp = Address.parse("127.0.0.1:7080")
    assert tcp.allowed_hosts() == {"127.0.0.1:7080", "localhost:7080", "[::1]:7080"}
    assert tcp.url() == "http://127.0.0.1:7080"
    assert Address.parse("[::1]:80").allowed_hosts() == {"[::1]:80", "localhost:80", "127.0.0.1:80", "localhost"}
    sock = Address.parse("unix:/tmp/a.sock")
    assert sock.allowed_hosts() is None and sock.url() == "http://localhost" and sock.unix
