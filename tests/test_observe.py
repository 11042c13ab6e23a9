"""Seeing the running daemon from outside: a child's output kept across its restarts, a worker's own log lines in
its ring, and ``ctl logs -f`` / ``ctl events -f`` / ``ctl status --watch`` against a real daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_supervisor.testing import wait_until
from mcp_supervisor.testing.daemon import Daemon

pytestmark = pytest.mark.realtime

TALKER = """
import asyncio
from mcp_supervisor.telemetry.logs import get_logger

def factory(config):
    async def run(ctx):
        log = get_logger("talker")
        ctx.started()
        n = 0
        while True:
            log.info("hello from the worker", n=n)
            n += 1
            await asyncio.sleep(0.05)
    return run
"""

TREE = """
[tree]
intensity = 1000
[[tree.children]]
id = "crasher"
command = ["sh", "-c", "echo run $$$$ starting; echo oops $$$$ >&2; sleep 0.3; exit 3"]
log_lines = 4
[[tree.children]]
id = "ticker"
command = ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done"]
[[tree.children]]
id = "talker"
worker = "talker:factory"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("observe")
    (tmp / "talker.py").write_text(TALKER)
    d = Daemon(tmp, TREE)
    d.wait_ready()
    yield d
    assert d.stop() == 0


def lines(d: Daemon, path: str, n: int = 100) -> list[dict[str, object]]:
    code, body, _ = d.request("GET", f"/children/{path}/logs?lines={n}", headers={"Accept": "application/x-ndjson"})
    assert code == 200, body
    return [json.loads(x) for x in str(body).splitlines()]


def test_the_crash_output_of_the_previous_run_is_there_after_the_restart(daemon: Daemon) -> None:
    wait_until(lambda: daemon.node("crasher")["restarts"] >= 3, 30, "three restarts")
    kept = lines(daemon, "crasher")
    assert len(kept) <= 4  # log_lines = 4
    pids = {line["pid"] for line in kept}
    assert len(pids) >= 2, kept  # lines of more than one run, each marked with the pid that wrote it
    assert any(line["stream"] == "stderr" and str(line["text"]).startswith("oops") for line in kept)
    for line in kept:
        assert str(line["text"]).split()[-1 if line["stream"] == "stderr" else 1] == str(line["pid"])


def test_a_workers_own_log_lines_go_into_its_ring(daemon: Daemon) -> None:
    wait_until(lambda: len(lines(daemon, "talker")) >= 3, 30, "the worker's lines")
    kept = lines(daemon, "talker", 3)
    assert all(line["stream"] == "info" and "hello from the worker" in str(line["text"]) for line in kept)


def test_the_ui_is_served_with_a_strict_policy(daemon: Daemon) -> None:
    code, body, headers = daemon.request("GET", "/ui/")
    assert code == 200 and '<script src="app.js"' in str(body)
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    code, body, headers = daemon.request("GET", "/ui/app.js")
    assert code == 200 and headers["Content-Type"].startswith("text/javascript")
    assert daemon.request("GET", "/ui/../../etc/passwd")[0] == 404


class Ctl:
    """``mcp-supervisor ctl ...`` as a subprocess whose output lines are collected by a thread."""

    def __init__(self, d: Daemon, *args: str) -> None:
        env = dict(os.environ, NO_COLOR="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_supervisor.cli", "ctl", "--admin", d.admin, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=d.tmp,
        )  # fmt: skip
        self.out: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line.rstrip("\n"))

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; (exit code, stderr)."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        self._reader.join(10)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        self.close()
        return code, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def test_ctl_logs_follow_prints_new_lines_and_ends_quietly_on_ctrl_c(daemon: Daemon) -> None:
    ctl = Ctl(daemon, "logs", "ticker", "-n", "2", "-f")
    try:
        wait_until(lambda: len([x for x in ctl.out if " ticker stdout[" in x and " tick " in x]) >= 6, 30, "ticks")
        ticks = [int(x.rsplit(" ", 1)[1]) for x in ctl.out if " tick " in x]
        assert ticks == sorted(ticks) and ticks[-1] - ticks[0] == len(ticks) - 1  # in order, none missing
        code, err = ctl.interrupt()
        assert code == 130 and "Traceback" not in err
    finally:
        ctl.close()


def test_ctl_events_follow_and_status_watch(daemon: Daemon) -> None:
    events = Ctl(daemon, "events", "-f", "--path", "ticker")
    watch = Ctl(daemon, "status", "--watch")
    try:
        wait_until(lambda: any("ticker" in x for x in watch.out), 30, "the first drawing")
        wait_until(lambda: any(" ticker " in x for x in events.out), 30, "the recent events first")
        drawings = sum(1 for x in watch.out if x.startswith("root"))
        code, body, _ = daemon.request("POST", "/children/ticker/restart")
        assert code == 200, body
        wait_until(lambda: any("ChildStarted ticker" in x and "restarts=1" in x for x in events.out), 30, "restart")
        assert not any(" crasher " in x for x in events.out)  # --path ticker
        wait_until(lambda: sum(1 for x in watch.out if x.startswith("root")) > drawings, 30, "a redraw")
        assert any("ticker  process  running" in x and "restarts 1" in x for x in watch.out)
        for ctl in (events, watch):
            code, err = ctl.interrupt()
            assert code == 130 and "Traceback" not in err
    finally:
        events.close()
        watch.close()


def test_ctl_logs_of_an_unknown_child_is_a_clear_error(daemon: Daemon, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_supervisor.cli", "ctl", "--admin", daemon.admin, "logs", "nobody"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1 and "404" in done.stderr and "no child at path 'nobody'" in done.stderr
    assert "the root has: crasher, ticker, talker" in done.stderr and "ctl status" in done.stderr


def test_ctl_follows_across_a_daemon_restart(tmp_path: Path) -> None:
    """The new daemon numbers from 1 again: a follower resuming with the old run's id gets the new run's lines (and
    a note that the daemon restarted), not silence."""
    d = Daemon(tmp_path, TREE.split('[[tree.children]]\nid = "talker"', maxsplit=1)[0])
    d.wait_ready()
    logs, events = Ctl(d, "logs", "ticker", "-n", "1", "-f"), Ctl(d, "events", "-f", "--type", "ChildStarted")
    try:
        wait_until(lambda: any(" tick " in x for x in logs.out), 30, "ticks from the first run")
        wait_until(lambda: any("ChildStarted ticker" in x for x in events.out), 30, "the first run's events")
        d.relaunch()
        d.wait_ready()
        ready_at = time.monotonic()
        pid = d.node("ticker")["pid"]
        wait_until(lambda: any(f"ticker stdout[{pid}] tick" in x for x in logs.out), 10, "the new run's ticks")
        took = time.monotonic() - ready_at
        assert took < 2.0, f"the follower printed the new run's lines {took:.1f}s after it was ready"
        assert any("the daemon restarted" in x for x in logs.out)
        wait_until(lambda: any(f"ChildStarted ticker kind=process pid={pid}" in x for x in events.out), 10,
                   "the new run's events")  # fmt: skip
        for ctl in (logs, events):
            code, err = ctl.interrupt()
            assert code == 130 and "Traceback" not in err
    finally:
        logs.close()
        events.close()
        d.stop()
