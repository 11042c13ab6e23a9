"""``mcp-supervisor run`` as a real subprocess with a temporary config, its own runtime directory and a NOTIFY_SOCKET
that records what it tells systemd."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from . import free_port, wait_until

TOKEN = "test-token-0123456789abcdef"  # noqa: S105 - the test daemons' admin token, not a secret


class Daemon:
    """``mcp-supervisor run`` in a subprocess; records its sd_notify datagrams and its log lines."""

    def __init__(
        self,
        tmp: Path,
        tree_toml: str,
        *,
        token: bool = True,
        env: dict[str, str] | None = None,
        token_value: str = TOKEN,
        separate_stderr: bool = False,
        prefix: tuple[str, ...] = (),
        pass_fds: tuple[int, ...] = (),
        head: str = "",
    ) -> None:
        """``prefix``: a command the daemon's command line is appended to (it must exec it); ``head``: top-level
        keys written before the ``[daemon]`` table (``include = [...]``)."""
        self.head = head
        self.tmp = tmp
        self.token_value = token_value
        self.port = free_port()
        self.admin = f"127.0.0.1:{self.port}"
        self.config = tmp / "supervision.toml"
        self.token_file = tmp / "token"
        self.token_file.write_text(token_value + "\n")
        self.token_line = f'admin_token_file = "{self.token_file}"\n' if token else ""
        self.write(tree_toml)
        self.notify_path = str(tmp / "notify.sock")
        self.messages: list[str] = []
        self.log_path = tmp / "daemon.log"
        self.err_path = tmp / "daemon.err"
        self.runtime_dir = tmp / "run"  # its own XDG_RUNTIME_DIR: `ctl` finds this daemon, not another test's
        self.runtime_dir.mkdir(mode=0o700, exist_ok=True)
        self._argv = [*prefix, sys.executable, "-m", "mcp_supervisor.cli", "run", "--config", str(self.config)]
        self._env = dict(os.environ, NOTIFY_SOCKET=self.notify_path, PYTHONUNBUFFERED="1",
                         XDG_RUNTIME_DIR=str(self.runtime_dir), **(env or {}))  # fmt: skip
        self._separate_stderr, self._pass_fds = separate_stderr, pass_fds
        self._launch("wb")

    def _launch(self, mode: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.notify_path)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.05)
        self._log = open(self.log_path, mode)
        self._err = open(self.err_path, mode) if self._separate_stderr else None
        self.proc = subprocess.Popen(
            self._argv,
            stdout=self._log,
            stderr=self._err if self._err is not None else subprocess.STDOUT,
            env=self._env,
            cwd=self.tmp,
            pass_fds=self._pass_fds,
        )

    def relaunch(self) -> None:
        """Stop the daemon and start it again: the same config, address and state directory (a new incarnation)."""
        assert self.stop() == 0
        self.messages = []
        self._launch("ab")

    def write(self, tree_toml: str) -> None:
        self.config.write_text(
            f'{self.head}[daemon]\nadmin = "{self.admin}"\n{self.token_line}'
            + 'log_format = "json"\nlog_level = "debug"\n\n'
            + tree_toml
        )

    # -- sd_notify ---------------------------------------------------------------------------------------
    def drain_notify(self) -> list[str]:
        while self.notify.fileno() != -1:
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                return self.messages
        return self.messages

    def wait_notify(self, needle: str, timeout: float = 20.0, after: int = 0) -> str:
        def found() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()}")
            return next((m for m in self.drain_notify()[after:] if needle in m.split("\n")), None)

        return str(wait_until(found, timeout, f"sd_notify {needle}"))

    def wait_ready(self) -> None:
        self.wait_notify("READY=1")

    # -- HTTP -----------------------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, token: str | None = None, headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        """``token``: defaults to the daemon's own for POSTs; pass "" to send none."""
        req = urllib.request.Request(f"http://{self.admin}{path}", method=method, data=body)
        token = self.token_value if token is None else token
        if token and method == "POST":
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - http://127.0.0.1 only
                raw = resp.read()
                status, hdrs = resp.status, dict(resp.headers)
        except urllib.error.HTTPError as e:
            raw, status, hdrs = e.read(), e.code, dict(e.headers)
        try:
            return status, json.loads(raw), hdrs
        except ValueError:
            return status, raw.decode(), hdrs

    def ctl(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        """``mcp-supervisor ctl ARGS`` as an operator runs it next to this daemon: no --admin, no --token-file (it
        finds both from the daemon's state file), no colour."""
        return subprocess.run(
            [sys.executable, "-m", "mcp_supervisor.cli", "ctl", *args], check=False, capture_output=True, text=True,
            timeout=120, cwd=cwd or self.tmp,
            env=dict(os.environ, XDG_RUNTIME_DIR=str(self.runtime_dir), NO_COLOR="1", **env),
        )  # fmt: skip

    def status(self) -> dict[str, Any]:
        code, doc, _ = self.request("GET", "/status")
        assert code == 200, doc
        return doc  # type: ignore[no-any-return]

    def node(self, path: str) -> dict[str, Any]:
        stack = [self.status()]
        while stack:
            n = stack.pop()
            if n["path"] == path:
                return n
            stack.extend(n.get("children", []))
        raise KeyError(path)

    def pids(self, *paths: str) -> dict[str, int]:
        return {p: self.node(p)["pid"] for p in paths}

    def events(self, kind: str, path: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The last ``limit`` events of type ``kind`` the daemon still has (``GET /events?type=``; ``path``: of that
        child and below), oldest first."""
        where = f"&path={path}" if path is not None else ""
        code, body, _ = self.request("GET", f"/events?type={kind}{where}&limit={limit}")
        assert code == 200, body
        if isinstance(body, dict):  # one line: already parsed
            return [body]
        return [json.loads(line) for line in str(body).splitlines() if line.strip()]

    def metrics(self) -> str:
        code, text, _ = self.request("GET", "/metrics")
        assert code == 200
        return str(text)

    # -- life -----------------------------------------------------------------------------------------------
    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        if self._err is not None:
            self._err.close()
        self.drain_notify()
        self.notify.close()
        return code
