"""Who blocked the event loop: a real daemon with an in-process worker that calls ``time.sleep`` (a blocking call)
now and then. The ``LoopBlocked`` event names it and its frame, ``ctl why`` says so, the metrics count its seconds
and the loop's lateness; a well-behaved neighbour is never named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.testing import wait_until
from mcp_supervisor.testing.daemon import Daemon

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(90)]

BLOCKER = """\
import asyncio
import time


def factory(config):
    async def run(ctx):
        ctx.started()
        while True:
            await asyncio.sleep(0.2)
            time.sleep(0.6)  # a synchronous call: the whole daemon waits

    return run


def polite(config):
    async def run(ctx):
        ctx.started()
        while True:
            await asyncio.sleep(0.05)

    return run
"""


def test_a_blocking_worker_is_named_with_its_frame(tmp_path: Path) -> None:
    (tmp_path / "blocker.py").write_text(BLOCKER)
    d = Daemon(
        tmp_path,
        """
[tree]
[[tree.children]]
id = "jobs"
children = [{ id = "blocker", worker = "blocker:factory" }, { id = "polite", worker = "blocker:polite" }]
""",
    )
    try:
        d.wait_ready()

        def blocked() -> list[dict[str, Any]]:
            body = d.request("GET", "/events?type=LoopBlocked")[1]  # JSON lines (one line: already parsed)
            return [body] if isinstance(body, dict) else [json.loads(x) for x in str(body).splitlines() if x.strip()]

        events = wait_until(lambda: len(blocked()) >= 2 and blocked(), 30, "two LoopBlocked events")
        assert {e["path"] for e in events} == {"jobs/blocker"}  # the polite neighbour is never named
        last = events[-1]
        assert 0.5 <= float(str(last["duration_s"])) < 2.0, last
        frames = list(last["frames"])
        assert frames and frames[-1].startswith(str(tmp_path / "blocker.py")) and frames[-1].endswith(" in run")

        out = d.ctl("why", "jobs/blocker")
        assert out.returncode == 0, out.stderr
        assert "blocked the event loop" in out.stdout and "blocker.py:10 in run" in out.stdout, out.stdout
        metrics = d.metrics()
        line = next(
            m for m in metrics.splitlines() if m.startswith('mcp_loop_blocked_seconds_total{child="jobs/blocker"}')
        )
        assert float(line.rsplit(" ", 1)[1]) >= 1.0
        assert 'mcp_event_loop_lag_seconds_bucket{le="+Inf"}' in metrics
        assert d.request("GET", "/children/jobs/polite/exits")[1]["loop_blocked"] is None
    finally:
        d.stop()
