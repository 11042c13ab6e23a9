"""Private PostgreSQL, Redis, moto (S3) and OpenBao (Vault) servers on free loopback ports, started and stopped (or
killed) by a test. PostgreSQL's programs are found in the newest ``/usr/lib/postgresql/*/bin``, else on PATH."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import free_port

__all__ = ["BaoServer", "MotoServer", "PgServer", "RedisServer", "free_port", "port_open"]


def _pg_bin() -> Path:
    """Debian's newest ``/usr/lib/postgresql/N/bin``, else the directory of ``postgres`` on PATH."""
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    if versions:
        return max(versions, key=lambda p: int(p.parent.name))
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


class PgServer:
    """``initdb`` into a temp dir (as the postgres user when we are root), then ``postgres`` in the foreground."""

    def __init__(self, password: str | None = None) -> None:
        """``password``: TCP connections must authenticate (scram-sha-256) as postgres with it."""
        self.dir = Path(tempfile.mkdtemp(prefix="mcp-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            os.chmod(self.dir, 0o755)  # noqa: S103 - the postgres user must reach its data directory
        auth = ["-A", "trust"]
        if password is not None:
            pwfile = self.dir / "pwfile"
            pwfile.write_text(password + "\n")
            if self.user is not None:
                shutil.chown(pwfile, self.user, self.user)
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(self.data), *auth, "-U", "postgres", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, user=self.user,
        )  # fmt: skip

    @property
    def settings(self) -> dict[str, object]:
        out: dict[str, object] = {"host": "127.0.0.1", "port": self.port, "user": "postgres", "database": "postgres",
                                  "env": "test", "sslmode": "disable"}  # fmt: skip
        if self.password is not None:
            out["password"] = self.password
        return out

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=self.user, start_new_session=True,
        )  # fmt: skip
        _wait(self._accepting, 30, "postgres to accept connections")

    def _accepting(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {self.proc.returncode}")
        return (
            subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False
            ).returncode
            == 0
        )

    def kill(self) -> None:
        """SIGKILL the whole server (postmaster and backends), as a crash would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        _wait(lambda: not port_open(self.port), 10, "postgres port to close")
        pid_file = self.data / "postmaster.pid"
        pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    def __init__(self, password: str | None = None, users: dict[str, str] | None = None) -> None:
        """``password``: the default user's (``requirepass``); ``users``: more ACL users, name -> password."""
        self.dir = Path(tempfile.mkdtemp(prefix="mcp-redis-"))
        self.port = free_port()
        self.password = password
        self.users = users or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def settings(self) -> dict[str, object]:
        out: dict[str, object] = {"host": "127.0.0.1", "port": self.port, "env": "test"}
        if self.password is not None:
            out["password"] = self.password
        return out

    def start(self) -> None:
        auth = ["--requirepass", self.password] if self.password is not None else []
        for name, pw in self.users.items():
            auth += ["--user", name, "on", f">{pw}", "~*", "&*", "+@all"]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), *auth],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        _wait(lambda: port_open(self.port), 10, "redis to listen")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        _wait(lambda: not port_open(self.port), 10, "redis port to close")

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class MotoServer:
    """A real HTTP S3 endpoint (``moto_server``, its own process) on a free port; a restart loses its data."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: subprocess.Popen[bytes] | None = None
        self.bin = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def settings(self) -> dict[str, object]:
        return {"endpoint": self.endpoint, "access_key": "testing", "secret_key": "testing-secret",
                "bucket": "mcp-test", "create_bucket": True, "region": "us-east-1", "env": "test"}  # fmt: skip

    def start(self) -> None:
        self.server = subprocess.Popen(
            [self.bin, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        server = self.server

        def listening() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"moto_server exited with {server.returncode} (port {self.port} taken?)")
            return port_open(self.port)

        _wait(listening, 30, "moto to listen")

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()
            self.server = None
        _wait(lambda: not port_open(self.port), 10, "moto port to close")


class BaoServer:
    """OpenBao (``bao server -dev``): the Vault HTTP API, in memory, with a known root token."""

    TOKEN = "root-token-for-tests"  # noqa: S105 - a throwaway dev server's root token

    def __init__(self, token: str | None = None) -> None:
        if token is not None:
            self.TOKEN = token
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.bin = shutil.which("bao") or str(Path(sys.executable).parent / "bao")

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.bin, "server", "-dev", f"-dev-root-token-id={self.TOKEN}",
             f"-dev-listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "HOME": tempfile.gettempdir()},
        )  # fmt: skip
        _wait(self._healthy, 30, "OpenBao to be unsealed")

    def _healthy(self) -> bool:
        import urllib.error
        import urllib.request

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"bao exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"{self.addr}/v1/sys/health", timeout=1) as r:  # noqa: S310 - loopback
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        _wait(lambda: not port_open(self.port), 10, "bao port to close")

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
