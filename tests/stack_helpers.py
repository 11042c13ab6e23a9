"""The local stack (config/local.toml) as a real subprocess, for the end-to-end and chaos tests."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.testing import free_port
from mcp_supervisor.testing.daemon import Daemon

ROOT = Path(__file__).resolve().parents[1]


def low_port() -> int:
    """A free port below the ephemeral range, with the next one free too (bao's cluster port is port+1)."""
    for _ in range(200):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 10000
        if _free(port) and _free(port + 1):
            return port
    return free_port()


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def stack_env() -> Iterator[dict[str, str]]:
    var = Path(tempfile.mkdtemp(prefix="mcp-var-"))
    var.chmod(0o755)
    subprocess.run(["bash", str(ROOT / "scripts" / "local-secrets.sh"), str(var)], check=True)  # as run.sh does
    env = {
        "MCP_VAR_DIR": str(var),
        "MCP_PG_PORT": str(low_port()),
        "MCP_REDIS_PORT": str(low_port()),
        "MCP_S3_PORT": str(low_port()),
        "MCP_VAULT_PORT": str(low_port()),
        "MCP_HEALTH_INTERVAL": "0.2",
        "MCP_DEMO_EVERY": "0.5",
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
    }
    yield env
    subprocess.run(["rm", "-rf", str(var)], check=False)


class Stack(Daemon):
    """The daemon helper, run from the repository with config/local.toml copied (the test edits its copy)."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.local = (ROOT / "config" / "local.toml").read_text()
        super().__init__(tmp, "", token=True, env=env)
        self.proc.kill()  # the helper started it from tmp; restart from the repository root
        self.proc.wait()
        self._log.close()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/mcp-supervisor"), "run", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "NOTIFY_SOCKET": self.notify_path, "XDG_RUNTIME_DIR": str(self.runtime_dir), **env},
        )  # fmt: skip

    def write(self, tree_toml: str) -> None:
        text = getattr(self, "local", "")
        text = re.sub(r"^admin_token_file = .*\n", "", text, count=1, flags=re.M)  # the test's own token instead
        text = re.sub(r"^admin = .*$", f'admin = "{self.admin}"\n{self.token_line}', text, count=1, flags=re.M)
        text = text.replace('log_format = "${MCP_LOG_FORMAT:-auto}"', 'log_format = "json"')
        self.config.write_text(text + tree_toml)


def rounds_ok(d: Daemon) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("event") == "round trip ok"]


def tree_pids(d: Daemon) -> dict[str, Any]:
    out = {}
    stack = [d.status()]
    while stack:
        n = stack.pop()
        out[n["path"]] = (n.get("pid"), n["restarts"], n["state"])
        stack.extend(n.get("children", []))
    return out


def promtool_agrees(text: str) -> None:
    """Prometheus' own linter finds nothing wrong with the exposition (bootstrap installs Debian's promtool)."""
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    print(f"promtool check metrics: exit {check.returncode}\n{check.stdout}{check.stderr}")
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check
