"""``ctl`` as an operator uses it: run next to a daemon without --admin or --token-file (the daemon's state file says
where it is and which token file it reads), a short human answer from every command, ``--json`` for programs, and
the documented exit codes — 0 done, 1 failed, 2 usage, 3 unreachable, 4 unauthorized, 78 invalid config."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.cli.ctl import render_cluster
from mcp_supervisor.testing import wait_until
from mcp_supervisor.testing.daemon import Daemon

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(120)]  # each test runs a dozen `ctl` processes

TREE = """
[tree]
intensity = 1000
[[tree.children]]
id = "web"
command = ["sh", "-c", "echo web {instance} up; exec sleep 1000"]
instances = 3
[[tree.children]]
id = "edge"
strategy = "rest_for_one"
[[tree.children.children]]
id = "proxy"
command = ["sh", "-c", "echo proxy says hello; exec sleep 1000"]
[[tree.children.children]]
id = "cache"
command = ["sh", "-c", "echo cache warm; echo cache complains >&2; exec sleep 1000"]
[[tree.children]]
id = "flaky"
command = ["sleep", "1000"]
ready = { command = ["test", "-e", "ready-flag"], timeout = 1, interval = 0.05 }
[[tree.children]]
id = "health"
worker = "health"
config = { interval = 3600, critical = ["flaky"], checks = ["flaky"], system = false }
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("ctl")
    (tmp / "ready-flag").touch()
    d = Daemon(tmp, TREE)
    d.wait_ready()
    yield d
    assert d.stop() == 0


def run(d: Daemon, *args: str, code: int = 0, **env: Any) -> str:
    done = d.ctl(*args, **env)
    print(f"$ mcp-supervisor ctl {' '.join(args)}\n{done.stdout}{done.stderr}(exit {done.returncode})\n")
    assert done.returncode == code, (args, done.stdout, done.stderr)
    assert ("Traceback" not in done.stderr and not done.stdout.lstrip().startswith(("{", "["))) or "--json" in args
    return done.stdout + done.stderr


def pid(d: Daemon, path: str) -> int:
    node = d.node(path)
    assert node["state"] == "running", node
    return int(node["pid"])


def test_status_is_found_without_an_address_and_printed_as_a_tree(daemon: Daemon, tmp_path: Path) -> None:
    done = daemon.ctl("status", cwd=tmp_path)  # a directory with no config in it: the state file finds the daemon
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.splitlines()[0].startswith("root  supervisor  one_for_one  running")
    assert re.search(r"├── web#0  process  running  pid \d+  restarts 0", out)
    assert "│   └── cache  process  running" in out
    doc = json.loads(daemon.ctl("status", "--json").stdout)
    assert [c["id"] for c in doc["children"]][:3] == ["web#0", "web#1", "web#2"]


def test_restart_stop_start_print_one_line_per_child_with_the_pids(daemon: Daemon) -> None:
    before = pid(daemon, "edge/proxy")
    out = run(daemon, "restart", "edge/proxy")
    assert out == f"edge/proxy: restarted (pid {before} → {pid(daemon, 'edge/proxy')})\n"
    pids = {p: pid(daemon, p) for p in ("web#0", "web#1", "web#2")}
    out = run(daemon, "restart", "web#*")
    assert out.splitlines() == [f"{p}: restarted (pid {pids[p]} → {pid(daemon, p)})" for p in pids]
    out = run(daemon, "stop", "edge/*")
    assert out.splitlines()[0].startswith("edge/cache: stopped (was pid ")  # last started first, as a shutdown
    assert out.splitlines()[1].startswith("edge/proxy: stopped (was pid ")
    out = run(daemon, "start", "all")
    lines = out.splitlines()
    assert "web#0: already running" in lines and re.search(r"edge/proxy: started \(pid \d+\)", out), out
    assert daemon.node("edge/cache")["state"] == "running"
    doc = json.loads(run(daemon, "restart", "edge/cache", "--json"))
    assert doc["path"] == "edge/cache" and doc["previous_pid"] and doc["child"]["pid"] != doc["previous_pid"]


def test_failures_exit_non_zero_with_a_message_that_says_what_to_do(daemon: Daemon) -> None:
    out = run(daemon, "restart", "nope", code=1)
    assert "no child at path 'nope'; the root has: web#0, web#1, web#2, edge, flaky, health" in out
    out = run(daemon, "restart", "edge/zz*", code=1)
    assert "no child matches the pattern 'edge/zz*'" in out and "ctl status" in out
    (daemon.tmp / "ready-flag").unlink()
    try:
        out = run(daemon, "restart", "flaky", code=1)
        assert out.startswith("flaky: not restarted: ") and "start timeout" in out
        out = run(daemon, "health", code=1)  # a critical check fails
        assert out.splitlines()[0] == "health: fail" and "✗ flaky" in out
    finally:
        (daemon.tmp / "ready-flag").touch()
    assert run(daemon, "start", "flaky").startswith("flaky: started (pid ")
    out = run(daemon, "health")
    assert out.splitlines()[0] == "health: pass" and "✓ flaky" in out
    out = run(daemon, "restart", "web#0", code=4, MCP_SUPERVISOR_TOKEN_FILE="/etc/hostname")
    assert "wrong token" in out
    out = run(daemon, "--token-file", "/nonexistent/token", "restart", "web#0", code=4)
    assert "cannot read the admin token file /nonexistent/token" in out and "--token-file" in out
    out = run(daemon, "--admin", "127.0.0.1:1", "status", code=3)
    assert "cannot reach the daemon at 127.0.0.1:1" in out and "mcp-supervisor run" in out


def test_connection_options_go_before_or_after_the_command_and_bad_ones_say_why(daemon: Daemon) -> None:
    out = run(daemon, "restart", "web#0", "--token-file", "/nonexistent/token", code=4)
    assert "cannot read the admin token file /nonexistent/token" in out
    assert "cannot reach the daemon at 127.0.0.1:1" in run(daemon, "status", "--admin", "127.0.0.1:1", code=3)
    out = run(daemon, "--admin", "nowhere", "status", code=2)
    assert 'must be "host:port" or "unix:/absolute/path"' in out
    assert run(daemon, "frobnicate", code=2).startswith("usage:")


def test_reload_validates_before_it_answers_waiting_or_not(daemon: Daemon) -> None:
    good = daemon.config.read_text()
    assert run(daemon, "reload", "--wait") == "reload: nothing changed\n"
    daemon.config.write_text(good.replace("intensity = 1000", "intensity = -1"))
    try:
        for args in (("reload",), ("reload", "--wait")):
            out = run(daemon, *args, code=78)
            assert out.startswith("reload refused, the running configuration is kept: ") and "tree.intensity" in out
    finally:
        daemon.config.write_text(good)
    assert run(daemon, "reload").startswith("reload: accepted")
    daemon.config.write_text(good.replace("echo proxy says hello", "echo proxy says hi"))
    try:
        out = run(daemon, "reload", "--wait")
        assert out.splitlines() == ["reload: 1 changed", "  edge/proxy: changed"]
    finally:
        daemon.config.write_text(good)
        run(daemon, "reload", "--wait")


def test_logs_of_a_supervisor_merge_its_children_and_events_hide_the_noise(daemon: Daemon) -> None:
    wait_until(lambda: "cache complains" in daemon.ctl("logs", "edge").stdout, 30, "the edge's output")
    out = run(daemon, "logs", "edge")
    assert re.search(r"\d\d:\d\d:\d\d edge/proxy stdout\[\d+\] proxy says h", out)
    assert re.search(r"\d\d:\d\d:\d\d edge/cache stderr\[\d+\] cache complains", out)
    out = run(daemon, "events", "-n", "200")
    assert "ChildStarted" in out and "ProcessOutput" not in out
    assert not re.search(r"uptime_s=\d+\.\d{4,}", out)  # numbers are rounded
    assert "ProcessOutput" in run(daemon, "events", "--all", "-n", "10000")
    run(daemon, "reload", "--wait")  # at least one ReloadResult, whichever tests ran before on this daemon
    only = run(daemon, "events", "--type", "ReloadResult", "-n", "200")
    assert only and all(" ReloadResult " in line for line in only.splitlines())


def test_ctl_next_to_two_daemons_asks_which_one(daemon: Daemon, tmp_path: Path) -> None:
    other = Daemon(tmp_path, TREE.split('[[tree.children]]\nid = "edge"', maxsplit=1)[0])
    try:
        other.wait_ready()
        env = dict(os.environ, XDG_RUNTIME_DIR=str(daemon.runtime_dir), NO_COLOR="1")
        (daemon.runtime_dir / "mcp-supervisor").mkdir(exist_ok=True)
        for state in (other.runtime_dir / "mcp-supervisor").iterdir():  # both in one runtime directory
            (daemon.runtime_dir / "mcp-supervisor" / state.name).write_text(state.read_text())
        done = subprocess.run([sys.executable, "-m", "mcp_supervisor.cli", "ctl", "status"], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 1, done
        assert "2 daemons are running" in done.stderr and "--admin ADDR or --config FILE" in done.stderr
        by_config = daemon.ctl("--config", str(other.config), "status")
        assert by_config.returncode == 0 and "edge" not in by_config.stdout
    finally:
        other.stop()


def test_cluster_status_names_a_singleton_held_by_nobody_or_by_two() -> None:
    now = time.time()
    view = {"node": "a", "connected": True, "nodes": [], "singletons": [
        {"path": "cron", "holder": "a", "token": 4, "since": now - 30, "holders": ["a", "zz"]},
        {"path": "mailer", "holder": None, "token": 0, "since": 0.0, "holders": [], "unheld_for": 12.4},
    ]}  # fmt: skip
    lines = render_cluster(view).splitlines()
    assert lines[1] == "  cron                 held by a (token 4, since 30s), ALARM: 2 nodes say they hold it (a, zz)"
    assert lines[2] == "  mailer               held by nobody for 12s"
