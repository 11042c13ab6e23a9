"""The daemon under a crash storm: 50 OS children exiting at once and forever, while nobody reads its stdout.

Its log lines used to be written by the event loop itself, so a slow log reader (journald on a busy machine) slowed
restarts, the admin port and SIGTERM to the reader's pace, and a reader that stopped froze everything. Figures (rates
and latencies) are in ``benchmarks/storm.py``; this test proves the daemon keeps working at all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.testing import free_port, wait_until
from mcp_supervisor.testing.daemon import TOKEN

pytestmark = pytest.mark.realtime

N = 50


def get(admin: str, path: str, method: str = "GET") -> dict[str, Any]:
    req = urllib.request.Request(f"http://{admin}{path}", method=method)
    if method == "POST":
        req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def config(admin: str, token: Path, command: str) -> str:
    head = f'[daemon]\nadmin = "{admin}"\nadmin_token_file = "{token}"\nlog_format = "json"\n'
    tree = "[tree]\nintensity = 1000000\nperiod = 1\n"
    return head + tree + "".join(f'[[tree.children]]\nid = "c{i}"\ncommand = {command}\n' for i in range(N))


def test_a_storm_with_an_unread_stdout_keeps_restarting_answering_reloading_and_stopping(tmp_path: Path) -> None:
    admin = f"127.0.0.1:{free_port()}"
    token = tmp_path / "token"
    token.write_text(TOKEN)
    cfg = tmp_path / "storm.toml"
    cfg.write_text(config(admin, token, '["false"]'))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_supervisor.cli", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,  # never read until the end: the pipe fills up within a second
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:

        def restarts() -> int:
            doc = get(admin, "/status")
            return sum(int(c["restarts"]) for c in doc["children"])

        first = wait_until(lambda: _quiet(restarts), 30, "the admin port answering")
        wait_until(lambda: restarts() > first + 10 * N, 60, "restarts continuing with stdout unread")
        assert get(admin, "/livez")["status"] == "pass"
        # a reload to a quiet config in the middle of the storm brings every child up
        cfg.write_text(config(admin, token, '["sleep", "1000"]'))
        result = get(admin, "/reload?wait=1", "POST")
        assert result["ok"] is True, result
        wait_until(
            lambda: all(c["state"] == "running" for c in get(admin, "/status")["children"]),
            60,
            "every child running after the reload",
        )
        proc.send_signal(signal.SIGTERM)
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))  # type: ignore[union-attr]
        reader.start()  # the log reader catches up, as journald would
        assert proc.wait(30) == 0
        reader.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    events = [json.loads(line) for line in b"".join(out).decode().splitlines()]
    assert events[-1]["event"] == "stopped"  # what was queued while nobody read still reached the log


def _quiet(fn: object) -> int | None:
    try:
        return fn()  # type: ignore[operator,no-any-return]
    except OSError:
        return None
