"""The whole platform from config/local.toml as a real subprocess, and the README's run command as written."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcp_supervisor.config import load_config
from mcp_supervisor.config.redact import MASK
from mcp_supervisor.daemon.builtins import BUILTIN_WORKERS
from mcp_supervisor.testing import alive, wait_until
from tests.stack_helpers import ROOT, Stack, promtool_agrees, rounds_ok, tree_pids

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
        metrics = d.metrics()  # every service's metrics, as Prometheus' own linter and parser read them
        promtool_agrees(metrics)
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        assert families["mcp_vault_token_ttl_seconds"].samples[0].value == math.inf  # the dev root token
        assert families["mcp_db_query_duration_seconds"].type == "histogram"

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
        said = everything_it_said(d)
        assert d.stop(60) == 0
        assert not any(alive(p) for p in pids)
        only_real_secrets_are_masked(d, stack_env, said + d.log_text())
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


def everything_it_said(d: Stack) -> str:
    """The port's documents: the tree, every event, every child's output."""
    parts = [json.dumps(d.status())]
    parts.append(str(d.request("GET", "/events?limit=10000")[1]))
    for path in tree_pids(d):
        if path:
            parts.append(str(d.request("GET", f"/children/{path}/logs?lines=100000")[1]))
    return "\n".join(parts)


def only_real_secrets_are_masked(d: Stack, env: dict[str, str], text: str) -> None:
    """The stack's secrets are its random files and the S3 access key: none appears anywhere, and they are all
    the daemon counts as secret — a port, a data directory or the config's own name is never masked."""
    var = Path(env["MCP_VAR_DIR"])
    in_config = {(var / name).read_text().strip() for name in ("vault-token", "s3-secret-key")} | {"mcp-local-stack"}
    cfg = load_config(d.config, env={**os.environ, **env}, workers=BUILTIN_WORKERS, host_checks=True)
    assert cfg.secrets == in_config  # the token file's and the S3 keys: nothing else counts as secret
    real = in_config | {(var / "admin-token").read_text().strip(), d.token_value}
    leaked = [s for s in real if s in text]
    assert not leaked, "a secret appears in what the daemon wrote"
    masked = [text[max(0, m.start() - 60) : m.end()] for m in re.finditer(re.escape(MASK), text)]
    print(f"\n[REDACTED] in the local stack's output: {len(masked)}, each standing for a secret:")
    for context in masked:
        print("   ", context.replace("\n", " "))
        assert re.search(r"(?i)token|authorization|password|secret|cookie|://", context), context
    assert f"port={env['MCP_REDIS_PORT']}" in text  # redis-server's banner: the port is not masked


DEFAULT_PORTS = (7080, 15432, 16379, 19000, 18200, 18201)  # the admin port, the servers' (bao's cluster port too)


def clone(into: Path) -> Path:
    """A fresh clone of the working tree: every tracked file as it is now (committed or not), nothing else."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    into.mkdir()
    subprocess.run(["cp", "--parents", "-t", str(into), "--", *[f for f in files.decode().split("\0") if f]],
                   cwd=ROOT, check=True)  # fmt: skip
    return into


def processes_under(marker: str) -> list[str]:
    """Live processes whose command line or working directory mentions ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if (marker in cmd or cwd.startswith(marker)) and alive(int(name)):
            found.append(f"{name}: {cmd[:120]}")
    return found


@pytest.mark.timeout(900)
def test_the_readme_run_command_on_a_fresh_clone(tmp_path: Path) -> None:
    """As a new user: a fresh clone, the README's run command exactly as written (default relative paths, no MCP_*
    variables), /readyz, then every ctl command the run banner prints, then Ctrl-C: exit 0 and nothing left."""
    readme = (ROOT / "README.md").read_text()
    lines = [line.split("#")[0].strip() for block in re.findall(r"```sh\n(.*?)```", readme, re.S)
             for line in block.splitlines()]  # fmt: skip
    command = next(line for line in lines if "run.sh" in line)
    assert command == "bash scripts/run.sh"
    taken = [p for p in DEFAULT_PORTS if not free(p)]
    assert not taken, f"the README's default ports {taken} are taken on this machine: stop what uses them"
    repo = clone(tmp_path / "mcp-supervisor")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_")}
    proc = subprocess.Popen(["bash", "-c", command], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, b"")) if proc.stdout else None)
    reader.start()
    try:
        wait_until(lambda: proc.poll() is not None or ready("127.0.0.1:7080"), 800, "/readyz on the default port")
        text = b"".join(out).decode(errors="replace")
        assert proc.poll() is None, f"run.sh exited {proc.returncode}:\n{text[-4000:]}"
        assert "http://127.0.0.1:7080/ui/" in text
        assert (repo / "var" / "admin-token").stat().st_mode & 0o077 == 0
        banner = [line.split(":", 1)[-1].strip() if "terminal:" in line else line.strip()
                  for line in text.splitlines() if "mcp-supervisor ctl " in line]  # fmt: skip
        assert len(banner) >= 3, text[:2000]
        for line in banner:
            ctl_as_printed(repo, line, env)
        daemon_pid = proc.pid  # run.sh execs the daemon
        pids = [int(p) for p in re.findall(r"pid (\d+)", subprocess.run(
            ["bash", "-c", ".venv/bin/mcp-supervisor ctl status"], cwd=repo, env=env, capture_output=True,
            text=True, check=True).stdout)]  # fmt: skip
        assert len(pids) == 4, pids  # the four servers
        assert alive(daemon_pid)
        failed = subprocess.run(["bash", "-c", ".venv/bin/mcp-supervisor ctl restart no-such-child"], cwd=repo,
                                env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert failed.returncode == 1 and "no-such-child" in failed.stderr and not failed.stderr.startswith("{")
        assert zombies_under(daemon_pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(120)
        reader.join(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0, b"".join(out).decode(errors="replace")[-3000:]
    wait_until(lambda: not any(alive(p) for p in pids), 20, "the servers gone")
    assert processes_under(str(repo)) == []


def zombies_under(pid: int) -> list[int]:
    """The daemon's children that exited and were not reaped."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    out.append(int(child))
    return out


def free(port: int) -> bool:
    """Nothing listens on it (connections in TIME_WAIT from an earlier run do not count: servers reuse the address)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ready(admin: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{admin}/readyz", timeout=5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def ctl_as_printed(repo: Path, line: str, env: dict[str, str]) -> None:
    """Run one ctl command line of the banner, as printed: a one-shot must answer in words and exit 0; a follower
    (-f) must print something, then end quietly on Ctrl-C."""
    if " -f" not in line:
        done = subprocess.run(["bash", "-c", line], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip(), (line, done.stdout, done.stderr)
        assert not done.stdout.lstrip().startswith("{"), (line, done.stdout)  # words, not JSON
        return
    follower = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    got: list[str] = []
    thread = threading.Thread(
        target=lambda: got.extend(iter(follower.stdout.readline, "")) if follower.stdout else None
    )
    thread.start()
    try:
        wait_until(lambda: got, 60, f"output from {line!r}")
    finally:
        follower.send_signal(signal.SIGINT)
        code = follower.wait(30)
        thread.join(10)
        err = follower.stderr.read() if follower.stderr else ""
        for stream in (follower.stdout, follower.stderr):
            if stream is not None:
                stream.close()
    assert code == 130 and "Traceback" not in err, (line, code, err)
