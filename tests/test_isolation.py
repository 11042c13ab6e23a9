"""``isolation = "process"``: a supervisor's subtree runs in a Python process of its own. A worker there that aborts
the interpreter, or blocks its loop for good, takes down that process only: the daemon answers throughout, restarts
the isolated supervisor with the reason (``killed by SIGABRT``; SIGKILL after its shutdown budget), and its sibling
keeps its pid; ``kill -9`` of the daemon leaves no isolated interpreter behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.testing import alive, wait_until
from mcp_supervisor.testing.daemon import Daemon

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(120)]

WORKERS = """
import asyncio, os, time
from mcp_supervisor.testing.workers import steady

def fragile(config):
    async def run(ctx):
        ctx.started()
        while not os.path.exists(config["trigger"]):
            await asyncio.sleep(0.02)
        os.abort()  # the interpreter dies with SIGABRT
    return run

def hog(config):
    async def run(ctx):
        ctx.started()
        while not os.path.exists(config["trigger"]):
            await asyncio.sleep(0.02)
        held = []
        while True:  # a leak: 20 MB every 50 ms, touched so that it is resident
            held.append(bytearray(20 * 2**20))
            await asyncio.sleep(0.05)
    return run

def dozer(config):
    async def run(ctx):
        ctx.started()
        while not os.path.exists(config["trigger"]):
            await asyncio.sleep(0.02)
        os.unlink(config["trigger"])
        time.sleep(0.6)  # blocks its process's loop once
        await asyncio.Event().wait()
    return run

def stubborn(config):
    async def run(ctx):
        ctx.started()
        while not os.path.exists(config["trigger"]):
            await asyncio.sleep(0.02)
        open(config["trigger"] + ".blocked", "w").close()
        while True:
            time.sleep(60)  # blocks the loop for good: only a signal the kernel delivers can end it
    return run
"""


def config(tmp: Path, worker: str) -> str:
    return f"""
[tree]
intensity = 10
[[tree.children]]
id = "local"
command = ["sleep", "1000"]
[[tree.children]]
id = "iso"
isolation = "process"
shutdown = 1
[[tree.children.children]]
id = "calm"
worker = "mcp_supervisor.testing.workers:steady"
[[tree.children.children]]
id = "risky"
worker = "isoworkers:{worker}"
config = {{ trigger = "{tmp / "trigger"}" }}
[[tree.children.children]]
id = "tick"
command = ["sh", "-c", "echo hello from inside; trap 'echo got HUP' HUP; while :; do sleep 0.2; done"]
"""


def daemon(tmp: Path, worker: str) -> Daemon:
    (tmp / "isoworkers.py").write_text(WORKERS)
    d = Daemon(tmp, config(tmp, worker), env={"PYTHONPATH": str(tmp)})
    try:
        d.wait_ready()
    except BaseException:
        d.stop()  # nothing is left behind by a daemon that did not come up
        raise
    return d


def cmdline(pid: int) -> list[str]:
    try:
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def livez_ms(d: Daemon) -> float:
    t0 = time.monotonic()
    code, _, _ = d.request("GET", "/livez")
    assert code == 200
    return (time.monotonic() - t0) * 1000


def restarted(d: Daemon, old: int) -> Any:
    """The isolated supervisor's node once a new process runs it (its last exit recorded)."""
    return wait_until(
        lambda: (n := d.node("iso"))["state"] == "running" and n["pid"] not in (None, old) and n, 30, "a restart"
    )  # (None: the old one's exit is being handled)


def test_an_aborting_worker_takes_down_its_isolated_process_only(tmp_path: Path) -> None:
    d = daemon(tmp_path, "fragile")
    try:
        iso, local = d.node("iso"), d.node("local")
        argv = cmdline(iso["pid"])
        # what ps shows: forked from the fork server, named by what it runs
        assert " ".join(argv) == f"mcp-supervisor iso: isolated subtree of {d.config}", argv
        assert cmdline(parent_of(iso["pid"])) == ["mcp-supervisor fork server"]
        (tmp_path / "trigger").touch()
        worst = 0.0
        deadline = time.monotonic() + 30
        while d.node("iso")["pid"] == iso["pid"]:  # /livez on every look while the isolated process dies
            worst = max(worst, livez_ms(d))
            assert time.monotonic() < deadline, "the isolated supervisor was not restarted"
        (tmp_path / "trigger").unlink()
        node = restarted(d, iso["pid"])
        assert node["last_exit"]["detail"].startswith("killed by SIGABRT"), node["last_exit"]
        assert d.node("local")["pid"] == local["pid"]  # its sibling untouched
        assert worst < 100, f"/livez took {worst:.0f} ms"
        started = {e["path"] for e in d.events("ChildStarted")}  # its tree's events are the daemon's own
        assert {"iso/calm", "iso/risky"} <= started, started
        exited = [e for e in d.events("ChildExited") if e["path"] == "iso"]
        assert exited and "SIGABRT" in str(exited[-1]["reason"]), exited
    finally:
        d.stop()


def test_a_worker_that_blocks_its_loop_for_good_is_killed_with_its_process(tmp_path: Path) -> None:
    d = daemon(tmp_path, "stubborn")
    try:
        iso = d.node("iso")
        (tmp_path / "trigger").touch()
        wait_until((tmp_path / "trigger.blocked").exists, 10, "the isolated loop blocked in time.sleep")
        (tmp_path / "trigger").unlink()  # the next incarnation runs normally
        t0 = time.monotonic()
        code, body, _ = d.request("POST", "/children/iso/restart")
        took = time.monotonic() - t0
        assert code == 200, body
        assert not alive(iso["pid"])
        node = restarted(d, iso["pid"])
        assert "SIGKILL" in node["last_exit"]["detail"], node["last_exit"]  # after its 1 s shutdown budget
        assert 1.0 <= took < 10, took
        assert livez_ms(d) < 100
    finally:
        d.stop()


def test_kill_9_of_the_daemon_leaves_no_isolated_interpreter(tmp_path: Path) -> None:
    d = daemon(tmp_path, "fragile")
    iso = d.node("iso")["pid"]
    server, tick = parent_of(iso), d.node("iso/tick")["pid"]
    assert alive(iso) and alive(server) and alive(tick)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.stop()
    for pid, what in ((iso, "the isolated process"), (server, "the fork server"), (tick, "its OS child")):
        wait_until(lambda pid=pid: not alive(pid), 10, f"{what} gone with the daemon")


def test_a_reload_applies_the_difference_inside_and_restarts_the_process_only_when_its_own_keys_changed(
    tmp_path: Path,
) -> None:
    d = daemon(tmp_path, "steady")
    try:
        iso, local, tick = d.node("iso")["pid"], d.node("local")["pid"], d.node("iso/tick")["pid"]
        code, doc, _ = d.request("POST", "/reload?wait=1")
        assert code == 200 and doc["changes"] == [], doc
        assert d.node("iso")["pid"] == iso
        d.config.write_text(d.config.read_text().replace('id = "calm"', 'id = "calm2"'))
        code, doc, _ = d.request("POST", "/reload?wait=1")
        assert code == 200, doc
        assert {(c["path"], c["change"]) for c in doc["changes"]} == {("iso/calm", "removed"), ("iso/calm2", "added")}
        assert d.node("iso")["pid"] == iso and d.node("iso/tick")["pid"] == tick  # applied inside, by difference
        wait_until(lambda: _has(d, "iso/calm2") and not _has(d, "iso/calm"), 10, "the status to show the change")
        d.config.write_text(d.config.read_text().replace("shutdown = 1\n", "shutdown = 2\n"))  # its own key
        code, doc, _ = d.request("POST", "/reload?wait=1")
        assert code == 200 and ("iso", "changed") in {(c["path"], c["change"]) for c in doc["changes"]}, doc
        new = restarted(d, iso)
        assert new["pid"] != iso and d.node("local")["pid"] == local
        assert d.node("iso/calm2")["state"] == "running"
    finally:
        d.stop()


def test_the_status_shows_the_isolated_subtree_as_if_it_were_local(tmp_path: Path) -> None:
    d = daemon(tmp_path, "fragile")
    try:
        iso = d.node("iso")
        assert iso["isolated"] is True and iso["kind"] == "process"
        calm = d.node("iso/calm")
        assert calm["state"] == "running" and d.node("iso/risky")["state"] == "running"
        metrics = d.metrics()  # counted as the daemon's own children
        assert 'mcp_child_up{child="iso/calm",kind="worker"} 1.0' in metrics, metrics
        assert 'mcp_child_up{child="iso/tick",kind="process"} 1.0' in metrics
        (tmp_path / "trigger").touch()  # risky aborts: the whole process goes, and comes back
        wait_until(lambda: d.node("iso")["pid"] != iso["pid"], 30, "the isolated process restarted")
        (tmp_path / "trigger").unlink()
        wait_until(lambda: _has(d, "iso/risky") and d.node("iso")["pid"] != iso["pid"], 30, "its children again")
        assert d.node("iso/calm")["state"] == "running"
    finally:
        d.stop()


def _has(d: Daemon, path: str) -> bool:
    try:
        return bool(d.node(path)["state"] == "running")
    except KeyError:
        return False


def test_an_isolated_subtree_over_its_max_memory_is_restarted_with_that_reason(tmp_path: Path) -> None:
    text = config(tmp_path, "hog").replace("shutdown = 1\n", 'shutdown = 1\nmax_memory = "300M"\nmemory_check = 0.1\n')
    (tmp_path / "isoworkers.py").write_text(WORKERS)
    d = Daemon(tmp_path, text, env={"PYTHONPATH": str(tmp_path)})
    try:
        d.wait_ready()
        iso, local = d.node("iso"), d.node("local")
        (tmp_path / "trigger").touch()
        wait_until(lambda: d.node("iso")["pid"] != iso["pid"], 30, "the leaking subtree restarted")
        (tmp_path / "trigger").unlink()
        node = restarted(d, iso["pid"])
        assert node["last_exit"]["detail"].startswith("max_memory: resident"), node["last_exit"]
        assert d.node("local")["pid"] == local["pid"]
    finally:
        d.stop()


def test_ctl_reaches_inside_an_isolated_subtree(tmp_path: Path) -> None:
    """restart, stop, start, signal and logs of a child inside: done by its process, answered as for a local one."""
    d = daemon(tmp_path, "steady")
    try:
        iso, tick = d.node("iso")["pid"], d.node("iso/tick")["pid"]
        r = d.ctl("restart", "iso/tick")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"iso/tick: restarted (pid {tick} → " in r.stdout, r.stdout
        wait_until(lambda: d.node("iso/tick")["pid"] != tick, 10, "the status to show the new pid")
        assert d.node("iso")["pid"] == iso  # the isolated process itself untouched
        r = d.ctl("signal", "iso/tick", "HUP")
        assert r.returncode == 0 and "iso/tick: sent SIGHUP" in r.stdout, r.stdout + r.stderr
        wait_until(lambda: "got HUP" in d.ctl("logs", "iso/tick").stdout, 10, "the trap's line in ctl logs")
        assert "hello from inside" in d.ctl("logs", "iso/tick").stdout
        why = d.ctl("why", "iso/tick")  # its exit record, kept by the isolated process
        assert why.returncode == 0 and "stopped" in why.stdout, why.stdout + why.stderr
        r = d.ctl("stop", "iso/tick")
        assert r.returncode == 0 and "iso/tick: stopped" in r.stdout, r.stdout + r.stderr
        wait_until(lambda: d.node("iso/tick")["state"] != "running", 10, "stopped in the status")
        r = d.ctl("start", "iso/tick")
        assert r.returncode == 0, r.stdout + r.stderr
        r = d.ctl("restart", "iso/nosuch")
        assert r.returncode == 1 and "iso/nosuch" in r.stdout + r.stderr, r.stdout + r.stderr
        assert "nosuch" in (r.stdout + r.stderr)
        exits = [e for e in d.events("ChildExited") if e["path"] == "iso/tick"]
        assert len(exits) == 2 and all("stopped by SIGTERM" in str(e["reason"]) for e in exits), exits
    finally:
        d.stop()


CALLERS = """
import asyncio, json, os
from mcp_supervisor.core import Call, CallTimeout, NotRunning

def echo(config):
    async def run(ctx):
        ctx.register(config["name"])
        ctx.started()
        while True:
            msg = await ctx.receive()
            if config.get("silent"):
                continue
            if isinstance(msg, Call):
                msg.reply({"echo": msg.payload, "by": ctx.path})
            else:
                with open(config["casts"], "a") as f:
                    f.write(json.dumps(msg.payload) + "\\n")
    return run

def caller(config):
    async def run(ctx):
        ctx.started()
        while not os.path.exists(config["go"]):
            await asyncio.sleep(0.02)
        out = {"reply": await ctx.call(config["target"], {"n": 1, "list": (1, 2)})}
        for name, attempt in (
            ("unknown", lambda: ctx.call("nobody-anywhere", 1)),
            ("not_json", lambda: ctx.call(config["target"], {1, 2})),
            ("timeout", lambda: ctx.call(config["silent"], "x", timeout=0.3)),
        ):
            try:
                await attempt()
                out[name] = "no error"
            except (NotRunning, TypeError, CallTimeout) as e:
                out[name] = [type(e).__name__, str(e)]
        await ctx.cast(config["target"], {"cast_from": ctx.path})
        with open(config["out"], "w") as f:
            json.dump(out, f)
        await asyncio.Event().wait()
    return run
"""


def test_calls_and_casts_cross_the_boundary_both_ways_with_local_errors(tmp_path: Path) -> None:
    (tmp_path / "callers.py").write_text(CALLERS)
    casts = tmp_path / "casts"

    def conf(side: str, target: str, silent: str) -> str:
        return (
            f'{{ go = "{tmp_path / "go"}", out = "{tmp_path / side}.json", target = "{target}", silent = "{silent}" }}'
        )

    text = f"""
[[tree.children]]
id = "echo"
worker = "callers:echo"
config = {{ name = "echo", casts = "{casts}" }}
[[tree.children]]
id = "hush"
worker = "callers:echo"
config = {{ name = "hush", silent = true }}
[[tree.children]]
id = "outer"
worker = "callers:caller"
config = {conf("outer", "iso/pong", "hush-in")}
[[tree.children]]
id = "iso"
isolation = "process"
[[tree.children.children]]
id = "pong"
worker = "callers:echo"
config = {{ name = "pong", casts = "{casts}" }}
[[tree.children.children]]
id = "hush-in"
worker = "callers:echo"
config = {{ name = "hush-in", silent = true }}
[[tree.children.children]]
id = "inner"
worker = "callers:caller"
config = {conf("inner", "echo", "hush")}
"""
    d = Daemon(tmp_path, text, env={"PYTHONPATH": str(tmp_path)})
    try:
        d.wait_ready()
        (tmp_path / "go").touch()
        out = {}
        for side in ("outer", "inner"):
            result = tmp_path / f"{side}.json"
            wait_until(result.exists, 20, f"the {side} caller's results")
            out[side] = __import__("json").loads(result.read_text())
        # the daemon's worker calls a path inside; the isolated worker calls a name the daemon has
        assert out["outer"]["reply"] == {"echo": {"n": 1, "list": [1, 2]}, "by": "pong"}, out  # tuples arrive as lists
        assert out["inner"]["reply"] == {"echo": {"n": 1, "list": [1, 2]}, "by": "echo"}, out
        for side in out.values():
            assert side["unknown"][0] == "NotRunning" and "nobody-anywhere" in side["unknown"][1], side
            assert side["not_json"][0] == "TypeError" and "must be JSON" in side["not_json"][1], side
            assert side["timeout"] == ["CallTimeout", "no reply within 0.3s; a late reply will be dropped"], side
        wait_until(lambda: casts.exists() and len(casts.read_text().splitlines()) == 2, 10, "both casts delivered")
        assert sorted(casts.read_text().splitlines()) == ['{"cast_from": "inner"}', '{"cast_from": "outer"}']
    finally:
        d.stop()


def test_isolated_processes_are_forked_from_one_fork_server_that_survives_their_crashes(tmp_path: Path) -> None:
    text = config(tmp_path, "steady").replace(
        "shutdown = 1\n", "shutdown = 1\nlimits = { nofile = 333 }\numask = 0o027\n"
    )
    (tmp_path / "isoworkers.py").write_text(WORKERS)
    d = Daemon(tmp_path, text, env={"PYTHONPATH": str(tmp_path)})
    try:
        d.wait_ready()
        server = parent_of(d.node("iso")["pid"])
        assert cmdline(server) == ["mcp-supervisor fork server"]
        for _ in range(5):  # at once, again and again: each restart is forked by the same server
            pid = d.node("iso")["pid"]
            signal_and_wait(pid)
            new = restarted(d, pid)
            assert parent_of(new["pid"]) == server and alive(server)
            assert "killed by SIGKILL" in new["last_exit"]["detail"], new["last_exit"]
        status = Path(f"/proc/{new['pid']}/status").read_text()
        assert "Umask:\t0027" in status, status
        limits = Path(f"/proc/{new['pid']}/limits").read_text()
        assert any(line.startswith("Max open files") and line.split()[3:5] == ["333", "333"]
                   for line in limits.splitlines()), limits  # fmt: skip
        os.kill(server, signal.SIGKILL)  # the server dies: its children with it; the next start has a new one
        again = restarted(d, new["pid"])
        assert parent_of(again["pid"]) != server
        assert cmdline(parent_of(again["pid"])) == ["mcp-supervisor fork server"]
        assert d.node("iso/calm")["state"] == "running"
    finally:
        d.stop()


def signal_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 10, f"pid {pid} gone")


def test_a_restarted_isolated_subtree_runs_the_config_the_daemon_runs_not_an_unreloaded_edit(tmp_path: Path) -> None:
    d = daemon(tmp_path, "steady")
    try:
        iso = d.node("iso")["pid"]
        d.config.write_text(d.config.read_text().replace('id = "calm"', 'id = "edited"'))  # no reload yet
        signal_and_wait(iso)
        again = restarted(d, iso)
        wait_until(lambda: _has(d, "iso/calm"), 10, "the subtree as the daemon runs it")
        assert not _has(d, "iso/edited")
        code, doc, _ = d.request("POST", "/reload?wait=1")  # now it is the config: applied inside, by difference
        assert code == 200 and ("iso/edited", "added") in {(c["path"], c["change"]) for c in doc["changes"]}, doc
        assert d.node("iso")["pid"] == again["pid"]
        signal_and_wait(again["pid"])  # and a restart after the reload runs the reloaded config
        restarted(d, again["pid"])
        wait_until(lambda: _has(d, "iso/edited") and not _has(d, "iso/calm"), 10, "the reloaded subtree")
    finally:
        d.stop()


def test_a_worker_that_blocks_an_isolated_loop_is_named_in_the_daemon(tmp_path: Path) -> None:
    d = daemon(tmp_path, "dozer")
    try:
        (tmp_path / "trigger").touch()
        blocked = wait_until(lambda: [e for e in d.events("LoopBlocked") if e["path"] == "iso/risky"], 20, "blocked")
        assert blocked[0]["duration_s"] >= 0.25 and any("run" in f for f in blocked[0]["frames"]), blocked
        why = d.ctl("why", "iso/risky")
        assert why.returncode == 0 and "blocked the event loop" in why.stdout, why.stdout + why.stderr
        assert livez_ms(d) < 100  # the daemon's own loop was never blocked
    finally:
        d.stop()
