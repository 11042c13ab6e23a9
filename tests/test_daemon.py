"""The daemon as a real subprocess: OS-process children, signals, reload, sd_notify, the admin port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcp_supervisor.testing import alive, wait_until
from mcp_supervisor.testing.daemon import Daemon
from tests.stack_helpers import promtool_agrees

pytestmark = pytest.mark.realtime

SLEEP = 'command = ["sleep", "1000"]'


def children(*ids: str, strategy: str = "one_for_one", extra: str = "") -> str:
    out = f'[tree]\nstrategy = "{strategy}"\nintensity = 10\nperiod = 5\n'
    for i in ids:
        out += f'\n[[tree.children]]\nid = "{i}"\n{SLEEP}\n{extra}'
    return out


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def start(daemons: list[Daemon], tmp: Path, toml: str, **kw: object) -> Daemon:
    d = Daemon(tmp, toml, **kw)  # type: ignore[arg-type]
    daemons.append(d)
    d.wait_ready()
    return d


def restarts_metric(d: Daemon, child: str) -> float:
    for fam in text_string_to_metric_families(d.metrics()):
        for s in fam.samples:
            if s.name == "mcp_child_restarts_total" and s.labels["child"] == child:
                return s.value
    raise KeyError(child)


def test_kill_9_of_a_child_gives_a_new_pid_and_counts_a_restart(daemons: list[Daemon], tmp_path: Path) -> None:
    d = start(daemons, tmp_path, children("a", "b"))
    old = d.node("a")["pid"]
    assert restarts_metric(d, "a") == 0
    os.kill(old, signal.SIGKILL)
    new = wait_until(lambda: (p := d.node("a")["pid"]) not in (None, old) and p, what="new pid")
    assert alive(new) and not alive(old)
    assert d.node("a")["restarts"] == 1 and d.node("a")["last_exit"]["detail"] == "killed by SIGKILL"
    assert restarts_metric(d, "a") == 1


@pytest.mark.parametrize(
    ("strategy", "changed"),
    [("one_for_one", {"b"}), ("one_for_all", {"a", "b", "c"}), ("rest_for_one", {"b", "c"})],
)
def test_each_strategy_seen_through_pids(
    daemons: list[Daemon], tmp_path: Path, strategy: str, changed: set[str]
) -> None:
    d = start(daemons, tmp_path, children("a", "b", "c", strategy=strategy))
    before = d.pids("a", "b", "c")
    os.kill(before["b"], signal.SIGKILL)
    wait_until(lambda: all(d.node(p)["state"] == "running" and d.node(p)["pid"] != before[p] for p in changed))
    after = d.pids("a", "b", "c")
    assert {p for p in after if after[p] != before[p]} == changed


def test_reload_applies_only_the_difference(daemons: list[Daemon], tmp_path: Path) -> None:
    toml = (
        children("keep", "drop", "change")
        + '\n[[tree.children]]\nid = "sub"\nstrategy = "one_for_all"\n'
        + (f'[[tree.children.children]]\nid = "inner"\n{SLEEP}\n')
    )
    d = start(daemons, tmp_path, toml)
    os.kill(d.node("keep")["pid"], signal.SIGKILL)  # give "keep" a restart count to preserve
    wait_until(lambda: d.node("keep")["restarts"] == 1 and d.node("keep")["state"] == "running")
    before = d.pids("keep", "drop", "change", "sub/inner")
    new = (
        '[tree]\nstrategy = "one_for_one"\nintensity = 10\nperiod = 5\n'
        f'[[tree.children]]\nid = "keep"\n{SLEEP}\n'
        '[[tree.children]]\nid = "change"\ncommand = ["sleep", "2000"]\n'
        '[[tree.children]]\nid = "sub"\nstrategy = "one_for_all"\n'
        f'[[tree.children.children]]\nid = "inner"\n{SLEEP}\n'
        f'[[tree.children.children]]\nid = "added"\n{SLEEP}\n'
    )
    d.write(new)
    code, result, _ = d.request("POST", "/reload?wait=1")
    assert code == 200 and result["ok"], result
    assert sorted((c["path"], c["change"]) for c in result["changes"]) == [
        ("change", "changed"),
        ("drop", "removed"),
        ("sub/added", "added"),
    ]
    after = d.pids("keep", "change", "sub/inner", "sub/added")
    assert after["keep"] == before["keep"] and d.node("keep")["restarts"] == 1
    assert after["sub/inner"] == before["sub/inner"]
    assert after["change"] != before["change"] and not alive(before["change"])
    assert not alive(before["drop"])
    with pytest.raises(KeyError):
        d.node("drop")


def test_sighup_with_a_broken_file_changes_nothing_and_still_reports_ready(
    daemons: list[Daemon], tmp_path: Path
) -> None:
    d = start(daemons, tmp_path, children("a", "b"))
    before = d.pids("a", "b")
    seen = len(d.drain_notify())
    d.config.write_text(d.config.read_text().replace('id = "b"', 'id = "b"\nshutdown = -1'))
    d.signal(signal.SIGHUP)
    msg = d.wait_notify("READY=1", after=seen)
    reloading = [m for m in d.messages[seen:] if "RELOADING=1" in m]
    assert reloading and "MONOTONIC_USEC=" in reloading[0]
    assert "reload failed" in msg and "tree.children[1].shutdown" in msg
    assert d.pids("a", "b") == before
    assert "mcp_config_last_reload_successful 0.0" in d.metrics()
    code, result, _ = d.request("POST", "/reload")
    assert code == 422 and not result["ok"] and "shutdown" in result["error"]


def test_sigterm_stops_children_in_reverse_order_and_exits_0(daemons: list[Daemon], tmp_path: Path) -> None:
    order = tmp_path / "order"
    rec = f'trap "echo $ID >> {order}; exit 0" TERM; while :; do sleep 0.05; done'
    toml = '[tree]\nstrategy = "one_for_one"\n'
    for i in ("first", "second", "third"):
        toml += f'[[tree.children]]\nid = "{i}"\ncommand = ["sh", "-c", \'{rec}\']\nenv = {{ ID = "{i}" }}\n'
    d = start(daemons, tmp_path, toml)
    pids = d.pids("first", "second", "third")
    seen = len(d.drain_notify())
    assert d.stop() == 0
    assert order.read_text().split() == ["third", "second", "first"]
    assert not any(alive(p) for p in pids.values())
    assert any("STOPPING=1" in m for m in d.drain_notify()[seen:])


def test_a_child_ignoring_sigterm_is_killed_after_its_shutdown_time(daemons: list[Daemon], tmp_path: Path) -> None:
    toml = '[tree]\n[[tree.children]]\nid = "stubborn"\ncommand = ["sh", "-c", "trap \'\' TERM; while :; do sleep 0.05; done"]\nshutdown = 0.5\n'
    d = start(daemons, tmp_path, toml)
    pid = d.node("stubborn")["pid"]
    assert d.stop() == 0
    assert not alive(pid)
    events = [e["event"] for e in d.log_events()]
    assert "child did not stop in time; forcing" in events


def test_kill_9_of_the_daemon_leaves_no_child_alive(daemons: list[Daemon], tmp_path: Path) -> None:
    grand = 'command = ["sh", "-c", "sleep 1000 & sleep 1000 & wait"]'
    d = start(
        daemons, tmp_path, f'[tree]\n[[tree.children]]\nid = "a"\n{grand}\n[[tree.children]]\nid = "b"\n{SLEEP}\n'
    )
    leaders = d.pids("a", "b")
    group = [int(p) for p in subprocess.check_output(["pgrep", "-g", str(leaders["a"])]).split()]
    assert len(group) >= 3
    d.proc.kill()
    d.proc.wait()
    wait_until(lambda: not any(alive(p) for p in [*leaders.values(), *group]), what="every child gone")


def test_sd_notify_and_children_do_not_inherit_the_notify_socket(daemons: list[Daemon], tmp_path: Path) -> None:
    toml = '[tree]\n[[tree.children]]\nid = "env"\ncommand = ["sh", "-c", "echo notify=${NOTIFY_SOCKET:-unset} wd=${WATCHDOG_USEC:-unset}; exec sleep 1000"]\n'
    d = start(daemons, tmp_path, toml, env={"WATCHDOG_USEC": "200000"})
    ready = d.wait_notify("READY=1")
    assert "STATUS=running: 1/1 children running" in ready.split("\n")
    d.wait_notify("WATCHDOG=1")
    wait_until(lambda: any(e.get("event") == "output" for e in d.log_events()))
    line = next(e["line"] for e in d.log_events() if e.get("event") == "output")
    assert line == "notify=unset wd=unset"


def test_admin_auth_and_malformed_requests_get_4xx(daemons: list[Daemon], tmp_path: Path) -> None:
    d = start(daemons, tmp_path, children("a"))
    assert d.request("POST", "/children/a/restart", token="")[0] == 401
    assert d.request("POST", "/children/a/restart", token="wrong-token-wrong-token")[0] == 403
    assert d.request("POST", "/reload", token="x")[0] == 403
    assert d.request("POST", "/children/nope/restart")[0] == 404
    assert d.request("POST", "/children/a/explode")[0] == 400  # an unknown action
    assert d.request("GET", "/children/a/restart")[0] == 405
    assert d.request("GET", "/status", headers={"Host": "evil.example:80"})[0] == 421
    assert d.request("POST", "/reload", body=b"x" * 100_000)[0] == 413
    code, body, _ = d.request("POST", "/children/a/stop")
    assert code == 200 and body["child"]["state"] == "stopped"
    d.wait_notify("STATUS=running: 0/1 children running")  # STATUS= follows the tree's changes
    assert d.request("POST", "/children/a/stop")[0] == 200
    code, body, _ = d.request("POST", "/children/a/start")
    assert code == 200 and body["child"]["state"] == "running"
    for raw in (b"GARBAGE\r\n\r\n", b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
            s.sendall(raw)
            reply = s.recv(100)
        assert reply.startswith(b"HTTP/1.") and reply[9:10] == b"4", reply
    mutations = [e for e in d.log_events() if e.get("event") == "admin mutation"]
    assert {("denied", 401), ("denied", 403), ("not_found", 404), ("ok", 200)} <= {
        (e["outcome"], e["status"]) for e in mutations
    }


def test_mutations_are_off_without_a_token_file(daemons: list[Daemon], tmp_path: Path) -> None:
    d = start(daemons, tmp_path, children("a"), token=False)
    code, body, _ = d.request("POST", "/children/a/restart")
    assert code == 403 and "admin_token_file" in body["error"]


def test_read_endpoints(daemons: list[Daemon], tmp_path: Path) -> None:
    d = start(daemons, tmp_path, children("a"))
    doc = d.status()
    assert doc["kind"] == "supervisor" and doc["strategy"] == "one_for_one"
    node = doc["children"][0]
    assert {"id", "path", "kind", "state", "restarts", "uptime_s", "last_exit", "pid"} <= set(node)
    assert d.request("GET", "/livez")[0] == 200
    assert d.request("GET", "/readyz")[0] == 200
    code, health, headers = d.request("GET", "/health")
    assert code == 200 and headers["Content-Type"].startswith("application/health+json")
    assert health["status"] == "pass"
    code, _, headers = d.request("GET", "/metrics")
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = d.metrics()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["mcp_child_up"].type == "gauge"
    assert families["mcp_child_restarts"].type == "counter"
    assert "mcp_config_last_reload_successful" in families and "process_resident_memory_bytes" in families
    for counter in ("mcp_events_dropped", "mcp_log_lines_dropped", "mcp_child_restarts", "mcp_config_reloads"):
        assert families[counter].type == "counter" and f"{counter}_total " in text, counter
    assert "_created" not in text
    promtool_agrees(text)
    code, spec, _ = d.request("GET", "/openapi.json")
    assert code == 200 and spec["openapi"].startswith("3.") and "/children/{path}/{action}" in spec["paths"]


def test_ctl_status_and_reload(daemons: list[Daemon], tmp_path: Path) -> None:
    d = start(daemons, tmp_path, children("a"))
    cli = [
        sys.executable,
        "-m",
        "mcp_supervisor.cli",
        "ctl",
        "--admin",
        d.admin,
        "--token-file",
        str(d.token_file),
    ]
    out = subprocess.run([*cli, "status"], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0].startswith("root  supervisor  one_for_one  running")
    assert "└── a  process  running  pid" in out
    d.write(children("a", "b"))
    out = subprocess.run([*cli, "reload", "--wait"], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["reload: 1 added", "  b: added"]


def test_a_broken_config_exits_78_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[tree]\n[[tree.children]]\nid = "a"\ncommand = ["true"]\nrestart = "sometimes"\n')
    run = subprocess.run(
        [sys.executable, "-m", "mcp_supervisor.cli", "run", "--config", str(cfg)], capture_output=True, text=True
    )
    assert run.returncode == 78
    assert "bad.toml:5: tree.children[0].restart: must be one of permanent | transient | temporary" in run.stdout
    check = subprocess.run(
        [sys.executable, "-m", "mcp_supervisor.cli", "check-config", str(cfg)], capture_output=True, text=True
    )
    assert check.returncode == 78 and "tree.children[0].restart" in check.stderr


def test_health_endpoints_read_the_health_monitor(daemons: list[Daemon], tmp_path: Path) -> None:
    toml = children("svc") + (
        '\n[[tree.children]]\nid = "telemetry"\nworker = "telemetry"\n'
        '\n[[tree.children]]\nid = "health"\nworker = "health"\n'
        '[tree.children.config]\ninterval = "${HEALTH_EVERY:-3600}"\nchecks = ["svc"]\ncritical = ["svc"]\n'
    )
    d = start(daemons, tmp_path, toml)
    wait_until(lambda: d.request("GET", "/readyz")[0] == 200, what="first health round")
    code, doc, headers = d.request("GET", "/health")
    assert code == 200 and headers["Content-Type"].startswith("application/health+json")
    assert doc["status"] == "pass" and doc["checks"]["svc:responseTime"][0]["status"] == "pass"
    assert "system:memory" in doc["checks"]
    d.request("POST", "/children/svc/stop")
    code, doc, _ = d.request("POST", "/health/check")
    assert code == 200 and doc["status"] == "fail"
    assert d.request("GET", "/readyz")[0] == 503 and d.request("GET", "/health")[0] == 503
    assert 'mcp_health_check_status{check="svc:responseTime"} 0.0' in d.metrics()
    events = [e for e in d.log_events() if e.get("event") == "health changed"]
    assert [(e["previous"], e["current"]) for e in events] == [("unknown", "healthy"), ("healthy", "unhealthy")]


# a child that starts a grandchild in a session of its own, then waits: the grandchild is not in the child's group
ESCAPER = 'command = ["sh", "-c", "setsid sleep 1000 & wait"]'


def escapee_of(d: Daemon, path: str) -> int:
    pids = wait_until(lambda: d.node(path).get("detached_pids"), 20, f"an escapee of {path} seen")
    assert len(pids) == 1 and alive(pids[0])
    return int(pids[0])


def test_a_process_that_left_its_group_is_killed_when_its_child_restarts(daemons: list[Daemon], tmp_path: Path) -> None:
    d = start(daemons, tmp_path, f'[tree]\n[[tree.children]]\nid = "a"\n{ESCAPER}\n')
    leader = d.node("a")["pid"]
    escapee = escapee_of(d, "a")
    assert int(subprocess.check_output(["ps", "-o", "pgid=", "-p", str(escapee)])) != leader  # really escaped
    os.kill(leader, signal.SIGKILL)
    wait_until(lambda: not alive(escapee), 20, "the escapee killed with its child")
    second = escapee_of(d, "a")  # the restarted child's own escapee
    assert d.stop() == 0
    assert not alive(second)
    killed = [e for e in d.log_events() if e.get("event") == "killed a descendant that outlived its child"]
    assert killed and {e["child"] for e in killed} == {"a"}  # naming its child


def test_kill_9_of_the_daemon_also_kills_processes_that_left_their_group(daemons: list[Daemon], tmp_path: Path) -> None:
    d = start(daemons, tmp_path, f'[tree]\n[[tree.children]]\nid = "a"\n{ESCAPER}\n')
    leader = d.node("a")["pid"]
    escapee = escapee_of(d, "a")
    assert alive(leader) and alive(escapee) and os.getpgid(escapee) != leader  # it did leave the group
    d.proc.kill()
    assert d.proc.wait() == -signal.SIGKILL
    wait_until(lambda: not alive(leader) and not alive(escapee), 20, "child and escapee gone")
    assert not alive(leader) and not alive(escapee)


def test_an_orphan_reparented_to_the_daemon_does_not_outlive_it(daemons: list[Daemon], tmp_path: Path) -> None:
    # the intermediate shell exits at once: its setsid'd sleep is re-parented to the daemon (a child subreaper)
    toml = '[tree]\n[[tree.children]]\nid = "a"\ncommand = ["sh", "-c", "(setsid sleep 1000 &); exec sleep 1000"]\n'
    d = start(daemons, tmp_path, toml)
    orphan = wait_until(
        lambda: next((p for p in _children_of(d.proc.pid) if _comm(p) == "sleep" and p != d.node("a")["pid"]), None),
        20,
        "the orphan re-parented to the daemon",
    )
    assert d.stop() == 0
    assert not alive(orphan)


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
