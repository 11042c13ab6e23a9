"""OTP's rules at an isolated supervisor's boundary: the same tree, run once in-process and once with the nested
supervisor ``isolation = "process"``, must end the same way — as OTP says it does. (The in-process core is checked
against Erlang/OTP itself by tests/otp; this checks that isolating a supervisor changes nothing its parent sees.)

A supervisor that gives up (its intensity exceeded) or shuts itself down (``auto_shutdown``) exits with OTP's
``shutdown``: a permanent one is restarted, a transient or temporary one is not, and a significant one takes down a
parent with ``auto_shutdown``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.testing import wait_until
from mcp_supervisor.testing.daemon import Daemon

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(120)]

WORKER = """
import asyncio, os

def crashy(config):
    async def run(ctx):
        ctx.started()
        while not os.path.exists(config["trigger"]):
            await asyncio.sleep(0.01)
        os.unlink(config["trigger"])  # once: the next incarnation runs on
        if config["how"] == "crash":
            raise RuntimeError("crashed on purpose")
        # "normal": returns
    return run

"""


def tree(tmp: Path, case: dict[str, Any], isolated: bool) -> str:
    ends_by = case["ends_by"]
    sub_auto = "any_significant" if ends_by == "auto_shutdown" else "never"
    w_restart, w_significant = ("transient", "true") if ends_by == "auto_shutdown" else ("permanent", "false")
    how = "normal" if ends_by == "auto_shutdown" else "crash"
    root_auto = "any_significant" if case["significant"] else "never"
    return f"""
[tree]
intensity = 5
period = 3600
auto_shutdown = "{root_auto}"
[[tree.children]]
id = "keep"
worker = "mcp_supervisor.testing.workers:steady"
[[tree.children]]
id = "sub"
restart = "{case["restart"]}"
significant = {str(case["significant"]).lower()}
intensity = 0
period = 3600
auto_shutdown = "{sub_auto}"
{'isolation = "process"' if isolated else ""}
[[tree.children.children]]
id = "w"
worker = "diffw:crashy"
restart = "{w_restart}"
significant = {w_significant}
config = {{ trigger = "{tmp / "trigger"}", how = "{how}" }}
"""


CASES = [
    # restart, how the nested supervisor ends, significant (the root has auto_shutdown) -> restarted?, root ends?
    ("permanent", "intensity", False, True, False),
    ("transient", "intensity", False, False, False),
    ("temporary", "intensity", False, False, False),
    ("permanent", "auto_shutdown", False, True, False),
    ("transient", "auto_shutdown", False, False, False),
    ("temporary", "auto_shutdown", False, False, False),
    ("transient", "intensity", True, False, True),
    ("temporary", "auto_shutdown", True, False, True),
]


def outcome(tmp: Path, case: dict[str, Any], isolated: bool) -> dict[str, Any]:
    where = tmp / ("isolated" if isolated else "in-process")
    where.mkdir()
    (where / "diffw.py").write_text(WORKER)
    d = Daemon(where, tree(where, case, isolated), env={"PYTHONPATH": str(where)})
    try:
        d.wait_ready()
        (where / "trigger").touch()
        if case["root_ends"]:
            code = d.proc.wait(30)
            return {"root_ended": True, "daemon_exit": code}
        exited = wait_until(lambda: [e for e in d.events("ChildExited") if e["path"] == "sub"], 30, "sub exited")
        reason = exited[0]["reason"]
        restarted = bool([e for e in d.events("RestartScheduled") if e["path"] == "sub"])
        if restarted:
            wait_until(lambda: d.node("sub")["state"] == "running", 30, "sub running again")
        node = next((c for c in d.status()["children"] if c["path"] == "sub"), None)
        return {
            "root_ended": False,
            "reason": (reason["kind"], reason["detail"]) if isinstance(reason, dict) else reason,
            "restarted": restarted,
            "sub": (node["state"], node["restarts"]) if node is not None else None,
            "keep": d.node("keep")["state"],
        }
    finally:
        d.stop()


@pytest.mark.parametrize(("restart", "ends_by", "significant", "restarts", "root_ends"), CASES)
def test_an_isolated_supervisor_ends_as_an_in_process_one_does_by_otp_rules(  # noqa: PLR0917
    tmp_path: Path, restart: str, ends_by: str, significant: bool, restarts: bool, root_ends: bool
) -> None:
    case = {"restart": restart, "ends_by": ends_by, "significant": significant, "root_ends": root_ends}
    local, isolated = outcome(tmp_path, case, False), outcome(tmp_path, case, True)
    assert isolated == local, (local, isolated)
    if root_ends:
        assert local["root_ended"]
        return
    detail = "reached_max_restart_intensity" if ends_by == "intensity" else "auto_shutdown"
    assert local["reason"] == ("shutdown", detail)  # OTP's exit reason of a supervisor that ended by itself
    assert local["restarted"] is restarts
    assert local["keep"] == "running"
