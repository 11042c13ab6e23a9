"""No secret ever leaves: plant recognisable secrets everywhere a config can hold one, drive every path that writes,
and find none of them in anything the daemon wrote — logs, stderr, responses, STATUS=, the CLI's output.

Planted: the admin token, a PostgreSQL password, a Redis password (from a file), a Redis URL with another user's
password, an S3 secret key, a Vault token (from a file), and a child's env value. Driven: good and malformed admin
requests, every endpoint, bad configs through check-config, run, SIGHUP and POST /reload, every backing server
killed and restarted (outage and recovery), a child that prints its secret, and SIGTERM.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_supervisor.testing import wait_until
from mcp_supervisor.testing.daemon import Daemon
from mcp_supervisor.testing.servers import BaoServer, MotoServer, PgServer, RedisServer

ADMIN = "adm1n-Planted-Token-7f3a9c"
PG_PW = "pg-Planted-Pass-91bd"
REDIS_PW = "rd-Planted-Pass-22ce"
URL_PW = "url-Planted-Pass-6a0e"
S3_SECRET = "s3-Planted-Secret-Key-5e1f"
VAULT_TOKEN = "vault-Planted-Token-8d2b"
ENV_SECRET = "env-Planted-Value-3c4d"
PLANTED = {
    "admin token": ADMIN, "postgres password": PG_PW, "redis password": REDIS_PW, "redis url password": URL_PW,
    "s3 secret key": S3_SECRET, "vault token": VAULT_TOKEN, "child env secret": ENV_SECRET,
}  # fmt: skip

pytestmark = [pytest.mark.servers, pytest.mark.realtime, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, object]]:
    pg, rds = PgServer(password=PG_PW), RedisServer(password=REDIS_PW, users={"app": URL_PW})
    s3, bao = MotoServer(), BaoServer(token=VAULT_TOKEN)
    for server in (pg, rds, s3, bao):
        server.start()
    yield {"pg": pg, "redis": rds, "s3": s3, "bao": bao}
    pg.cleanup()
    rds.cleanup()
    s3.stop()
    bao.cleanup()


def tree(tmp: Path, servers: dict[str, object]) -> str:
    pg, rds, s3, bao = servers["pg"], servers["redis"], servers["s3"], servers["bao"]
    assert isinstance(pg, PgServer) and isinstance(rds, RedisServer)
    assert isinstance(s3, MotoServer) and isinstance(bao, BaoServer)
    (tmp / "redis.pw").write_text(REDIS_PW + "\n")
    (tmp / "vault.token").write_text(VAULT_TOKEN + "\n")
    quick = "connect_attempts = 2\ncheck_interval = 0.2\ncheck_failures = 1"
    backoff = "backoff = { initial = 0.2, max = 1 }"
    return f"""
[tree]
intensity = 1000
period = 1
[[tree.children]]
id = "db"
worker = "postgres"
{backoff}
[tree.children.config]
host = "127.0.0.1"
port = {pg.port}
user = "postgres"
password = "{PG_PW}"
database = "postgres"
sslmode = "disable"
env = "test"
connect_timeout = 1
{quick}
[[tree.children]]
id = "cache"
worker = "redis"
{backoff}
[tree.children.config]
host = "127.0.0.1"
port = {rds.port}
password_file = "{tmp / "redis.pw"}"
env = "test"
{quick}
[[tree.children]]
id = "cache2"
worker = "redis"
{backoff}
[tree.children.config]
url = "redis://app:{URL_PW}@127.0.0.1:{rds.port}/0"
env = "test"
{quick}
[[tree.children]]
id = "files"
worker = "s3"
{backoff}
[tree.children.config]
endpoint = "{s3.endpoint}"
access_key = "planted-access"
secret_key = "{S3_SECRET}"
bucket = "mcp-secrets"
create_bucket = true
env = "test"
{quick}
[[tree.children]]
id = "vault"
worker = "vault"
{backoff}
[tree.children.config]
addr = "{bao.addr}"
token_file = "{tmp / "vault.token"}"
timeout = 1
retries = 0
token_check_interval = 0.2
[[tree.children]]
id = "health"
worker = "health"
config = {{ interval = 0.3, timeout = 1 }}
[[tree.children]]
id = "telemetry"
worker = "telemetry"
[[tree.children]]
id = "app"
command = ["sh", "-c", "echo key=$API_KEY; echo stderr-key=$API_KEY >&2; exec sleep 1000"]
env = {{ API_KEY = "{ENV_SECRET}", MODE = "demo" }}
public_env = ["MODE"]
"""


def raw(d: Daemon, data: bytes) -> bytes:
    """One request on a raw socket (for what urllib refuses to send); the whole answer."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def health_of(d: Daemon, check: str) -> str:
    _, doc, _ = d.request("GET", "/health")
    entries = [e for k, v in doc.get("checks", {}).items() if k.startswith(f"{check}:") for e in v]
    return entries[0]["status"] if entries else "absent"


def test_no_planted_secret_appears_in_anything_the_daemon_writes(tmp_path: Path, servers: dict[str, object]) -> None:
    seen: list[tuple[str, str]] = []  # (where, text)
    d = Daemon(tmp_path, tree(tmp_path, servers), token_value=ADMIN, separate_stderr=True)
    try:
        d.wait_ready()
        wait_until(lambda: health_of(d, "db") == "pass" and health_of(d, "vault") == "pass", 30, "healthy checks")

        # every read endpoint
        for path in ("/status", "/livez", "/readyz", "/health", "/metrics", "/openapi.json"):
            code, body, _ = d.request("GET", path)
            assert code in (200, 503), (path, code)
            seen.append((f"GET {path}", json.dumps(body) if not isinstance(body, str) else body))

        # good and bad mutations
        pid = d.node("app")["pid"]
        code, body, _ = d.request("POST", "/children/app/restart")
        assert code == 200, body
        wait_until(lambda: d.node("app")["pid"] not in (None, pid), 15, "app restarted")
        for method, path, token, headers in [
            ("POST", "/health/check", None, {}),
            ("POST", "/reload?wait=1", None, {}),
            ("POST", f"/children/{ADMIN}/restart", None, {}),  # the token in the path: echoed in the 404?
            ("POST", "/children/app/restart", "wrong-" + ADMIN, {}),
            ("POST", "/children/app/restart", "", {"Cookie": f"session={ADMIN}"}),
            ("POST", "/children/app/restart", "", {"Authorization": f"Basic {ADMIN}"}),
            ("GET", "/children/app/restart", "", {"Authorization": f"Bearer {ADMIN}"}),
            ("GET", "/status", "", {"Host": f"{ADMIN}.example:80"}),
        ]:
            code, body, _ = d.request(method, path, token=token, headers=headers)
            seen.append((f"{method} {path} {headers}", json.dumps(body) if not isinstance(body, str) else body))
        assert raw(d, b"POST /children/app/restart HTTP/1.1\r\nHost: " + d.admin.encode()
                   + b"\r\nAuthorization: Bearer " + ADMIN.encode() + b"\x00\r\n\r\n").split(b" ")[1] == b"400"  # fmt: skip
        for bad in (
            b"GET /status HTTP/1.1\r\nHost: x\r\nCookie: " + ADMIN.encode() + b"\x01\r\n\r\n",
            b"GET /" + ADMIN.encode() + b"\x7f HTTP/1.1\r\n\r\n",
            b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: nope-" + ADMIN.encode() + b"\r\n\r\n",
        ):
            seen.append(("malformed request", raw(d, bad).decode(errors="replace")))

        # bad configs: POST /reload, SIGHUP, check-config and run
        good = d.config.read_text()
        bad_env = good.replace('MODE = "demo" }', f'MODE = "demo", RETRIES = 3, TOKEN2 = "{ENV_SECRET}x" }}')
        bad_pw = good.replace(f'password = "{PG_PW}"', f'password = ["{PG_PW}"]')
        for i, text in enumerate((bad_env, bad_pw)):
            d.config.write_text(text)
            code, body, _ = d.request("POST", "/reload?wait=1")
            assert code == 422, body
            seen.append(("POST /reload (bad)", json.dumps(body)))
            n = len(d.drain_notify())
            d.signal(signal.SIGHUP)
            d.wait_notify("READY=1", after=n)
            bad_file = tmp_path / f"bad{i}.toml"
            bad_file.write_text(text)
            for args in (["check-config", str(bad_file)], ["run", "--config", str(bad_file)]):
                done = subprocess.run([sys.executable, "-m", "mcp_supervisor.cli", *args], capture_output=True,
                                      text=True, timeout=60, cwd=tmp_path)  # fmt: skip
                assert done.returncode == 78, done
                seen.append((f"cli {args[0]} stdout", done.stdout))
                seen.append((f"cli {args[0]} stderr", done.stderr))
        d.config.write_text(good)

        # every backing server down, then back
        pg, rds, s3, bao = servers["pg"], servers["redis"], servers["s3"], servers["bao"]
        assert isinstance(pg, PgServer) and isinstance(rds, RedisServer)
        assert isinstance(s3, MotoServer) and isinstance(bao, BaoServer)
        for name, down, up, check in [
            ("db", pg.kill, pg.start, "db"),
            ("cache", rds.kill, rds.start, "cache"),
            ("files", s3.stop, s3.start, "files"),
            ("vault", bao.kill, bao.start, "vault"),
        ]:
            down()
            wait_until(lambda c=check: health_of(d, c) == "fail", 30, f"{name} seen failing")
            up()
            wait_until(lambda c=check: health_of(d, c) == "pass", 60, f"{name} recovered")
        seen.append(("GET /status after outages", json.dumps(d.status())))
        seen.append(("GET /health after outages", json.dumps(d.request("GET", "/health")[1])))
    finally:
        code = d.stop()
    assert code == 0
    stdout, stderr = d.log_text(), d.err_path.read_text(errors="replace")
    seen += [("daemon stdout", stdout), ("daemon stderr", stderr)]
    seen += [(f"sd_notify #{i}", m) for i, m in enumerate(d.messages)]

    # the test could fail: the planted values were really there to leak
    events = d.log_events()
    assert any(e.get("event") == "output" and e.get("line") == "key=[REDACTED]" for e in events), "child output"
    assert any("malformed request" in str(e.get("event")) for e in events)
    assert any(e.get("event") == "child exited" and e.get("child") == "db" for e in events), "db outage seen"
    leaks = [(where, name) for where, text in seen for name, secret in PLANTED.items() if secret in text]
    assert leaks == [], leaks
    for line in stderr.splitlines():
        json.loads(line)  # every stderr line is in the configured format (JSON)
    for line in stdout.splitlines():
        json.loads(line)


def test_reload_keeps_redacting_the_previous_secrets_and_adds_the_new(tmp_path: Path) -> None:
    body = '[tree]\n[[tree.children]]\nid = "p"\ncommand = ["sh", "-c", "echo v=$K; exec sleep 1000"]\nenv = { K = "%s" }\n'
    d = Daemon(tmp_path, body % "first-Planted-aaaa", token_value=ADMIN)
    try:
        d.wait_ready()

        def outputs() -> int:
            return sum(1 for e in d.log_events() if e.get("line") == "v=[REDACTED]")

        # ready means spawned: the first incarnation's line must be out before the reload replaces it
        wait_until(lambda: outputs() == 1, 30, "the first output")
        d.write(body % "second-Planted-bbbb")
        code, result, _ = d.request("POST", "/reload?wait=1")
        assert code == 200 and result["changes"] == [{"path": "p", "change": "changed"}], result
        wait_until(lambda: outputs() == 2, 30, "the second output")
    finally:
        assert d.stop() == 0
    text = d.log_text()
    assert "first-Planted-aaaa" not in text and "second-Planted-bbbb" not in text
