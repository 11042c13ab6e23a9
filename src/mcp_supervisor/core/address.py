"""An address to listen on or connect to, parsed once: ``host:port``, ``[v6]:port`` or ``unix:/absolute/path``.

The admin port, the sockets the daemon holds for its children and ``ctl``'s ``--admin`` all take this form; the text
is parsed where it enters (the config loader, the command line) and the value travels from there.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_UNIX_PATH = 107  # sun_path is 108 bytes with its NUL


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


@dataclass(frozen=True, slots=True)
class Address:
    host: str = ""
    port: int = 0
    path: str = ""
    """A unix socket's path (then ``host`` and ``port`` are empty)."""

    @property
    def unix(self) -> bool:
        return bool(self.path)

    @classmethod
    def parse(cls, text: str) -> Address:
        """ValueError says what is wrong and what the form is."""
        if not isinstance(text, str):
            raise ValueError(f'must be "host:port" or "unix:/absolute/path", got {type(text).__name__}')
        if text.startswith("unix:"):
            path = text[5:]
            if not path.startswith("/") or len(path.encode()) > MAX_UNIX_PATH or "\x00" in path:
                raise ValueError(
                    f"a unix socket needs an absolute path of at most {MAX_UNIX_PATH} bytes, got {_shown(text)}"
                )
            return cls(path=path)
        return cls.tcp(text)

    @classmethod
    def tcp(cls, text: str) -> Address:
        """``host:port`` or ``[v6]:port`` only; ValueError says what is wrong."""
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f'must be "host:port" or "unix:/absolute/path", got {_shown(text)}')
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not (port_s.isascii() and port_s.isdigit()) or len(port_s) > 5 or not 0 < int(port_s) < 65536:
            raise ValueError(f"port must be 1..65535, got {_shown(port_s)}")
        return cls(host=host, port=int(port_s))

    @property
    def loopback(self) -> bool:
        """A unix socket, or a TCP address only this host can reach."""
        return self.unix or self.host in ("localhost", "::1") or self.host.startswith("127.")

    def allowed_hosts(self) -> set[str] | None:
        """Host header values a request to this address may carry (None: no check, a unix socket)."""
        if self.unix:
            return None
        names = {self._host_text(), "localhost", "127.0.0.1", "[::1]"}
        return {f"{n}:{self.port}" for n in names} | ({"localhost"} if self.port == 80 else set())

    def url(self) -> str:
        """The base URL of an HTTP server at this address (``http://localhost`` over a unix socket)."""
        return "http://localhost" if self.unix else f"http://{self._host_text()}:{self.port}"

    def _host_text(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.unix else f"{self._host_text()}:{self.port}"
