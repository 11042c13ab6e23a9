"""The whole platform from config/local.toml as a real subprocess, and the README's run command as written."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.daemon_helpers import alive, free_port, wait_until
from tests.stack_helpers import ROOT, Stack, rounds_ok, tree_pids

pytestmark = pytest.mark.realtime


@pytest.mark.timeout(240)
def test_the_local_stack_end_to_end(tmp_path: Path, stack_env: dict[str, str]) -> None:
    d = Stack(tmp_path, stack_env)
    try:
        d.wait_notify("READY=1", timeout=120)
        wait_until(lambda: d.request("GET", "/readyz")[0] == 200, 60, "/readyz passing")
        wait_until(lambda: len(rounds_ok(d)) >= 2, 60, "the example's round trips")
        first = rounds_ok(d)[0]
        assert {"db_ms", "cache_ms", "s3_ms", "encrypt_ms", "decrypt_ms", "publish_ms"} <= set(first)

        # kill -9 the Redis server: it and the workers after it restart, nothing else
        before = tree_pids(d)
        os.kill(before["redis/server"][0], signal.SIGKILL)
        wait_until(lambda: d.node("redis/cache")["restarts"] >= 1 and d.node("redis/cache")["state"] == "running"
                   and d.node("redis/server")["state"] == "running", 60, "redis pair restarted")  # fmt: skip
        after = tree_pids(d)
        changed = {p for p in before if before[p][:2] != after.get(p, (None, None, None))[:2]}
        assert changed == {"redis/server", "redis/cache"}, changed
        wait_until(
            lambda: (
                ("degraded", "healthy")
                in [(e["previous"], e["current"]) for e in d.log_events() if e.get("event") == "health changed"]
            ),
            60,
            "healthy again",
        )
        health = [(e["previous"], e["current"]) for e in d.log_events() if e.get("event") == "health changed"]
        assert ("healthy", "degraded") in health
        assert d.request("GET", "/health")[1]["status"] == "pass"
        n = len(rounds_ok(d))
        wait_until(lambda: len(rounds_ok(d)) > n, 60, "round trips after the restart")

        # SIGHUP with an edited interval: only the example app restarts, the servers keep their pids
        before = tree_pids(d)
        seen = len(d.drain_notify())
        d.config.write_text(d.config.read_text().replace('every = "${MCP_DEMO_EVERY:-3}"', "every = 0.25"))
        d.signal(signal.SIGHUP)
        d.wait_notify("READY=1", after=seen)
        after = tree_pids(d)
        for server in ("postgres/server", "redis/server", "s3/server", "vault/server"):
            assert after[server][0] == before[server][0], server
        reload = [e for e in d.log_events() if e.get("event") == "reloaded"]
        assert reload and reload[-1]["changes"] == [{"path": "app", "change": "changed"}]

        # SIGTERM: exit 0 and no process of the tree left
        pids = [pid for pid, _, _ in tree_pids(d).values() if pid]
        assert len(pids) == 4
        rows_before = rounds_ok(d)[-1]["row_id"]
        assert d.stop(60) == 0
        assert not any(alive(p) for p in pids)
    finally:
        if d.proc.poll() is None:
            d.stop()

    # data in the var directory survives a restart: the row ids continue
    (tmp_path / "again").mkdir()
    again = Stack(tmp_path / "again", stack_env)
    try:
        again.wait_notify("READY=1", timeout=120)
        wait_until(lambda: len(rounds_ok(again)) >= 1, 60, "round trips after a restart")
        assert rounds_ok(again)[0]["row_id"] > rows_before
    finally:
        again.stop(60)


@pytest.mark.timeout(300)
def test_the_readme_run_command_as_written(stack_env: dict[str, str]) -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```sh", 1)[1].split("```", 1)[0]
    run_line = next(line for line in block.splitlines() if "run" in line.split("#")[0])
    command = run_line.split("#")[0].strip()
    assert command == "bash scripts/run.sh"
    admin = f"127.0.0.1:{free_port()}"
    env = {**os.environ, **stack_env, "MCP_ADMIN": admin, "MCP_LOG_FORMAT": "json"}
    # bash -c runs the line as a shell would; run.sh ends in exec, so the signal reaches the daemon itself
    proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode(errors="replace")
            if not line:
                break
            lines.append(line)
            if '"round trip ok"' in line:
                break
        assert any("round trip ok" in line for line in lines), "".join(lines[-30:])
        assert any(f"http://{admin}/ui/" in line for line in lines)  # the web observer's address
        with urllib.request.urlopen(f"http://{admin}/readyz", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://{admin}/ui/", timeout=10) as r:
            assert r.status == 200 and b"app.js" in r.read()
        # run.sh made an admin token (mode 0600) that the UI's buttons and ctl use
        token_file = Path(stack_env["MCP_VAR_DIR"]) / "admin-token"
        assert token_file.stat().st_mode & 0o077 == 0
        req = urllib.request.Request(f"http://{admin}/children/app/restart", method="POST",
                                     headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
        pids = [int(p) for p in re.findall(r'"pid": (\d+)', "".join(lines))]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(90)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
    wait_until(lambda: not any(alive(p) for p in pids), 10, "no process left")
