"""A daemon's state file is trusted only while its pid is still that daemon: a file left by a killed daemon whose
pid now names another process (even one whose command line mentions us) is ignored and removed — ``ctl reload``
would otherwise SIGHUP a stranger."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_supervisor.daemon import discovery


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path / "mcp-supervisor"


@pytest.fixture
def lookalike() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line says mcp_supervisor, as a daemon's does."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "mcp_supervisor"])
    yield proc
    proc.kill()
    proc.wait()


def info(pid: int, started_at: float) -> discovery.DaemonInfo:
    return discovery.DaemonInfo(pid, "127.0.0.1:1", "/etc/x.toml", None, started_at, "0")


def test_a_file_written_by_the_running_process_is_found(runtime: Path, lookalike: subprocess.Popen[bytes]) -> None:
    path = discovery.write(info(lookalike.pid, time.time()))
    assert path is not None and path.parent == runtime
    assert lookalike.pid in [d.pid for d in discovery.running()]


def test_a_file_older_than_the_process_behind_its_pid_is_stale(
    runtime: Path, lookalike: subprocess.Popen[bytes]
) -> None:
    path = discovery.write(info(lookalike.pid, time.time() - 60))  # written a minute before this process began
    assert path is not None
    assert lookalike.pid not in [d.pid for d in discovery.running(everywhere=True)]  # (other tests' daemons may run)
    assert not path.exists(), "the stale file is cleaned up"
