"""Why did it die: real programs ended every way, each end recorded with its cause, crash loops named, `ctl why`
telling a person — a kernel OOM kill (in a memory cgroup the test makes, where the machine has the controller),
a start failure, a crash after readiness, an outside kill -TERM, a liveness stop, max_memory, and an outside
kill -9 near the memory limit."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.testing import free_port, wait_until
from mcp_supervisor.testing.daemon import Daemon

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(180)]

PY = sys.executable
MIB = 1 << 20
# allocates 1 MiB every 2 ms, touching each page, until something stops it
ALLOCATE = "import time\nx = []\nwhile True:\n    x.append(bytearray(1 << 20)); time.sleep(0.002)"
HOLD = "import time, sys\nx = bytearray(84 << 20)\nx[::4096] = b'x' * len(x[::4096])\nprint('holding', flush=True)\ntime.sleep(1000)"
ALLOCATE_TOML, HOLD_TOML = ALLOCATE.replace("\n", "\\n"), HOLD.replace("\n", "\\n")  # in a TOML string


def memory_cgroup_v1() -> Path | None:
    """A fresh v1 memory cgroup limited to 48 MiB, where this machine has one we may make (else None)."""
    base = Path("/sys/fs/cgroup/memory")
    if not (base / "memory.limit_in_bytes").exists() or os.geteuid() != 0:
        return None
    cg = base / f"mcp-oom-test-{os.getpid()}-{os.urandom(3).hex()}"
    try:
        cg.mkdir()
        (cg / "memory.limit_in_bytes").write_text(str(48 * MIB))
    except OSError:
        return None
    return cg


@pytest.fixture(scope="module")
def oom_cgroup() -> Iterator[Path | None]:
    cg = memory_cgroup_v1()
    yield cg
    if cg is not None:
        wait_until(lambda: not (cg / "cgroup.procs").read_text().strip(), 10, "the OOM cgroup to empty")
        cg.rmdir()


def tree(oom: Path | None, tmp: Path) -> str:
    port = free_port()
    oom_child = (
        f"""
[[tree.children]]
id = "oom"
command = ["sh", "-c", "echo $$$$ > {oom}/cgroup.procs && exec {PY} -c '{ALLOCATE_TOML}'"]
backoff = {{ initial = 0.2, max = 0.5, jitter = 0 }}
"""
        if oom is not None
        else ""
    )
    return f"""
[tree]
intensity = 100000
period = 2
[[tree.children]]
id = "startfail"
command = ["sh", "-c", "if [ -e {tmp}/once ]; then echo 'cannot bind 127.0.0.1:{port}: address in use' >&2; exit 3; fi; touch {tmp}/once; exec {PY} -c 'import socket, time; s = socket.socket(); s.bind((\\"127.0.0.1\\", {port})); s.listen(); time.sleep(0.5)'"]
ready = {{ tcp = "127.0.0.1:{port}", timeout = 5 }}
backoff = {{ initial = 0.05, max = 0.1, jitter = 0 }}
[[tree.children]]
id = "crasher"
command = ["sh", "-c", "n=$(cat {tmp}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > {tmp}/count; echo started; if [ $n -le 4 ]; then sleep 0.2; echo \\"fatal: lost the database (attempt $n, pid $$$$)\\" >&2; exit 1; fi; exec sleep 1000"]
backoff = {{ initial = 0.05, max = 0.1, jitter = 0 }}
[[tree.children]]
id = "victim"
command = ["sleep", "1000"]
[[tree.children]]
id = "hog"
command = ["{PY}", "-c", "{ALLOCATE_TOML}"]
max_memory = "40M"
memory_check = 0.1
backoff = {{ initial = 5, max = 5 }}
[[tree.children]]
id = "sick"
command = ["sleep", "1000"]
live = {{ command = ["false"], every = 0.1, failures = 2, timeout = 2 }}
backoff = {{ initial = 5, max = 5 }}
[[tree.children]]
id = "near"
command = ["{PY}", "-c", "{HOLD_TOML}"]
max_memory = "100M"
memory_check = 0.2
{oom_child}"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, oom_cgroup: Path | None) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("why")
    d = Daemon(tmp, tree(oom_cgroup, tmp))
    d.wait_ready()
    yield d
    assert d.stop() == 0


def exits(d: Daemon, path: str) -> dict[str, Any]:
    status, doc, _ = d.request("GET", f"/children/{path}/exits")
    assert status == 200, doc
    return doc  # type: ignore[no-any-return]


def ended_with(d: Daemon, path: str, cause: str, timeout: float = 30) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        return next((r for r in reversed(exits(d, path)["exits"]) if r["cause"] == cause), None)

    return wait_until(found, timeout, f"{path} to end with {cause}")  # type: ignore[no-any-return]


def events(d: Daemon, kind: str, path: str) -> list[dict[str, Any]]:
    status, body, _ = d.request("GET", f"/events?type={kind}&path={path}&limit=1000")
    assert status == 200
    text = body if isinstance(body, str) else json.dumps(body)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def why(d: Daemon, path: str) -> str:
    done = d.ctl("why", path)
    print(f"$ mcp-supervisor ctl why {path}\n{done.stdout}{done.stderr}")
    assert done.returncode == 0, done.stderr
    return done.stdout


def node(d: Daemon, path: str) -> dict[str, Any]:
    doc = d.request("GET", "/status")[1]
    return next(c for c in doc["children"] if c["path"] == path)


def test_a_start_failure_loop(daemon: Daemon) -> None:
    record = ended_with(daemon, "startfail", "start-failure")
    assert record["ready_at"] is None and record["exit_code"] == 3
    assert any("address in use" in line for line in record["last_lines"])
    wait_until(lambda: exits(daemon, "startfail")["crash_loop"], 30, "the start-failure loop to be named")
    out = why(daemon, "startfail")
    assert out.startswith("startfail: crash-looping (") and "start-failure" in out and "never" in out


def test_a_crash_after_readiness_loops_then_recovers(daemon: Daemon) -> None:
    record = ended_with(daemon, "crasher", "crash")
    assert record["ready_at"] is not None and record["exit_code"] == 1 and record["signal"] is None
    assert record["last_lines"][-1].startswith("fatal: lost the database (attempt ")
    started = wait_until(lambda: events(daemon, "CrashLoopStarted", "crasher"), 30, "the crash loop")
    assert len(started) == 1 and started[0]["cause"] == "crash" and started[0]["count"] == 3
    assert started[0]["line"].startswith("fatal: lost the database")
    out = why(daemon, "crasher")
    assert "crash" in out and "exit code 1" in out and "last output of the last failed incarnation" in out
    ended = wait_until(lambda: events(daemon, "CrashLoopEnded", "crasher"), 30, "the recovery")
    assert len(ended) == 1 and ended[0]["count"] == 4 and ended[0]["cause"] == "crash"
    assert node(daemon, "crasher")["crash_loop"] is None and node(daemon, "crasher")["exits"]["crash"] == 4


def test_an_outside_kill_term_is_a_kill(daemon: Daemon) -> None:
    pid = wait_until(lambda: node(daemon, "victim")["pid"], 10, "victim's pid")
    os.kill(pid, signal.SIGTERM)
    record = ended_with(daemon, "victim", "killed")
    assert record["signal"] == "SIGTERM" and record["pid"] == pid
    assert "killed by SIGTERM" in why(daemon, "victim")


def test_max_memory_and_liveness_are_the_daemons_own_stops(daemon: Daemon) -> None:
    hog = ended_with(daemon, "hog", "limit")
    assert hog["ended_by"] == "max_memory" and hog["peak_rss_bytes"] > 40 * MIB
    assert "max_memory: resident" in why(daemon, "hog")
    sick = ended_with(daemon, "sick", "liveness")
    assert sick["ended_by"] == "liveness" and "checks failed in a row" in why(daemon, "sick")


def test_an_outside_kill_9_near_the_memory_limit_may_be_an_oom_kill(daemon: Daemon) -> None:
    wait_until(lambda: any("holding" in line for line in daemon.log_text().splitlines()), 30, "near to hold")
    wait_until(lambda: (node(daemon, "near")["resources"] or {}).get("rss_bytes", 0) >= 90 * MIB, 30, "a sample")
    res = node(daemon, "near")["resources"]
    assert res["threads"] >= 1 and res["processes"] == 1 and res["cpu_s"] >= 0
    wait_until(lambda: node(daemon, "near")["resources"]["fds"] is not None, 30, "an fd count")
    os.kill(node(daemon, "near")["pid"], signal.SIGKILL)
    record = ended_with(daemon, "near", "oom-kill")
    assert record["certainty"] == "possible" and record["signal"] == "SIGKILL"
    out = why(daemon, "near")
    assert "oom-kill" in out and "max_memory is 100 MiB" in out and "possible" in out


def test_the_kernels_oom_killer(daemon: Daemon, oom_cgroup: Path | None) -> None:
    if oom_cgroup is None:
        pytest.skip("no cgroup v1 memory controller to make a limited cgroup in (the max_memory and near-limit "
                    "tests cover the rest)")  # fmt: skip
    record = ended_with(daemon, "oom", "oom-kill")
    assert record["certainty"] == "certain" and record["signal"] == "SIGKILL"
    assert record["peak_rss_bytes"] >= 40 * MIB
    wait_until(lambda: exits(daemon, "oom")["diagnosis"].startswith("crash-looping"), 30, "the OOM loop")
    out = why(daemon, "oom")
    assert "oom-kill 3 times" in out or "oom-kill" in out
    assert "max_memory is not set" in out and "peak RSS" in out


def test_metrics_count_exits_by_cause(daemon: Daemon) -> None:
    ended_with(daemon, "hog", "limit")
    status, text, _ = daemon.request("GET", "/metrics")
    assert status == 200
    assert 'mcp_child_exits_total{cause="limit",child="hog"}' in text
    assert 'mcp_child_resident_memory_bytes{child="victim"}' in text
    assert 'mcp_child_cpu_seconds_total{child="victim"}' in text
    assert 'mcp_child_last_exit_timestamp_seconds{child="hog"}' in text
