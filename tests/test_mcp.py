"""`mcp-supervisor mcp`: the official SDK's client over stdio against a real daemon — resources and tools listed,
the tree read, `why` on a crashing child, mutations refused (not allowed; no token) and allowed (the pid changes),
dry runs that change nothing; and the MCP Inspector's command line (a client nobody here wrote) when npm has it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_supervisor.testing import free_port, wait_until
from mcp_supervisor.testing.daemon import TOKEN, Daemon
from mcp_supervisor.testing.servers import port_open

mcp = pytest.importorskip("mcp", reason="the [mcp] extra is not installed")
from mcp import Client, StdioServerParameters  # noqa: E402

pytestmark = [pytest.mark.realtime, pytest.mark.timeout(120)]

TREE = """
[daemon.mcp]
allow = ["restart", "reload"]

[tree]
intensity = 1000
period = 2
[[tree.children]]
id = "web"
command = ["sleep", "100000"]
env = { DB_PASSWORD = "hunter2-hunter2-hunter2" }
[[tree.children]]
id = "crasher"
command = ["sh", "-c", "echo 'fatal: cannot reach the database' >&2; exit 3"]
backoff = { initial = 0.2, max = 0.5, jitter = 0 }
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("mcp")
    d = Daemon(tmp, TREE)
    d.wait_ready()
    yield d
    d.stop()


def server(d: Daemon, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_supervisor.cli", "mcp", "--admin", d.admin, "--config", str(d.config), *extra],
        env={**os.environ, "XDG_RUNTIME_DIR": str(d.runtime_dir)},
        cwd=str(d.tmp),
    )


def text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def test_an_agent_reads_the_tree_and_asks_why(daemon: Daemon) -> None:
    wait_until(lambda: daemon.node("crasher")["restarts"] >= 3, 30, "crasher restarted three times")
    async with Client(server(daemon, "--token-file", str(daemon.token_file))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {"status", "why", "logs", "events", "health", "check_config", "restart", "reload"}
        read, write = tools["status"].annotations, tools["restart"].annotations
        assert read is not None and read.read_only_hint is True and read.destructive_hint is False
        assert write is not None and write.destructive_hint is True and "dry_run" in str(tools["restart"].input_schema)
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert {"supervisor://tree", "supervisor://events", "supervisor://health", "supervisor://config"} <= uris

        status = text(await client.call_tool("status", {}))
        assert "web" in status and "crasher" in status
        why = text(await client.call_tool("why", {"path": "crasher"}))
        assert why.startswith("crasher: crash-looping") and "fatal: cannot reach the database" in why
        logs = text(await client.call_tool("logs", {"path": "crasher", "lines": 5, "grep": "FATAL"}))
        assert logs and all("fatal: cannot reach the database" in line for line in logs.splitlines())
        events = text(await client.call_tool("events", {"limit": 5, "type": "ChildExited", "path": "crasher"}))
        assert "crasher" in events and "exit code 3" in events
        verdict = text(await client.call_tool("check_config", {"text": "[tree]\nintensity = -1\n"}))
        assert verdict.startswith("invalid: ") and "tree.intensity" in verdict

        tree = await client.read_resource("supervisor://tree")
        assert "crasher" in tree.contents[0].text  # type: ignore[union-attr]
        config = (await client.read_resource("supervisor://config")).contents[0].text  # type: ignore[union-attr]
        assert "DB_PASSWORD" in config and "hunter2-hunter2-hunter2" not in config and "[REDACTED]" in config


async def test_mutations_need_the_allow_list_and_the_token(daemon: Daemon) -> None:
    before = daemon.node("web")["pid"]
    async with Client(server(daemon, "--token-file", str(daemon.token_file))) as client:
        dry = await client.call_tool("restart", {"paths": ["web"], "dry_run": True})
        assert not dry.is_error and text(dry) == f"would restart web (running, pid {before})"
        assert daemon.node("web")["pid"] == before  # a dry run changes nothing
        stop = await client.call_tool("stop", {"paths": ["web"]})  # not in [daemon.mcp] allow: not offered
        assert stop.is_error and "stop" in text(stop)
        done = await client.call_tool("restart", {"paths": ["web"]})
        assert not done.is_error and text(done).startswith(f"web: restarted (pid {before} → "), text(done)
    after = daemon.node("web")["pid"]
    assert after not in (None, before)
    audit = [e for e in daemon.log_events() if e.get("event") == "admin mutation" and e.get("action") == "restart web"]
    assert audit and audit[-1]["outcome"] == "ok"  # audited like any mutation

    nowhere = daemon.tmp / "no-token"
    async with Client(server(daemon, "--token-file", str(nowhere))) as client:
        refused = await client.call_tool("restart", {"paths": ["web"]})
        assert refused.is_error and "cannot read the admin token file" in text(refused)
    assert daemon.node("web")["pid"] == after


async def test_the_same_over_streamable_http_behind_the_token_and_the_host_check(daemon: Daemon) -> None:
    import httpx2  # the SDK's HTTP client
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_supervisor.cli", "mcp", "--http", f"127.0.0.1:{port}", "--admin", daemon.admin,
         "--config", str(daemon.config), "--token-file", str(daemon.token_file)],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(daemon.runtime_dir)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 30, "the MCP endpoint listening")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                names = {t.name for t in (await client.list_tools()).tools}
                assert {"status", "why", "restart"} <= names
                why = text(await client.call_tool("why", {"path": "crasher"}))
                assert why.startswith("crasher: ")
            ping = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
            headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
            foreign = await http.post(url, content=ping, headers={**headers, "Host": "evil.example:80"})
            assert foreign.status_code == 421  # DNS rebinding: a name that is not this loopback address
        async with httpx2.AsyncClient() as anonymous:
            refused = await anonymous.post(url, content=ping, headers=headers)
            assert refused.status_code == 401 and "admin token" in refused.json()["error"]
            wrong = await anonymous.post(url, content=ping, headers={**headers, "Authorization": "Bearer nope"})
            assert wrong.status_code == 401
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()


def test_http_needs_a_token_and_loopback(daemon: Daemon, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "mcp_supervisor.cli", "mcp", "--admin", daemon.admin]
    none = subprocess.run([*base, "--http", f"127.0.0.1:{free_port()}", "--token-file", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert none.returncode == 4 and "cannot read the admin token file" in none.stderr
    wide = subprocess.run([*base, "--http", f"0.0.0.0:{free_port()}", "--token-file", str(daemon.token_file)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert wide.returncode == 2 and "loopback only" in wide.stderr


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_the_mcp_inspector_cli_lists_the_tools_and_calls_status(daemon: Daemon, tmp_path: Path) -> None:
    tools = Path(__file__).resolve().parent.parent / ".tools" / "inspector"
    cli = tools / "node_modules" / ".bin" / "mcp-inspector"
    if not cli.exists():
        done = subprocess.run(["npm", "install", "--prefix", str(tools), "--no-audit", "--no-fund", "--silent",
                               "@modelcontextprotocol/inspector@0.14.3"], capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"the MCP Inspector could not be installed from npm: {done.stderr[-300:]}")
    # the Inspector passes the server only the variables it is given with -e (and takes --config for its own)
    base = [str(cli), "--cli", "-e", f"MCP_SUPERVISOR_CONFIG={daemon.config}", "-e",
            f"XDG_RUNTIME_DIR={daemon.runtime_dir}", sys.executable, "-m", "mcp_supervisor.cli", "mcp"]  # fmt: skip
    env = dict(os.environ)
    listed = subprocess.run([*base, "--method", "tools/list"], capture_output=True, text=True, timeout=120,
                            env=env, check=False)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    names = {t["name"] for t in json.loads(listed.stdout)["tools"]}
    assert {"status", "why", "logs", "restart"} <= names
    called = subprocess.run([*base, "--method", "tools/call", "--tool-name", "status"], capture_output=True,
                            text=True, timeout=120, env=env, check=False)  # fmt: skip
    assert called.returncode == 0, called.stderr
    assert "crasher" in json.loads(called.stdout)["content"][0]["text"]
    (tmp_path / "inspector.txt").write_text(listed.stdout + called.stdout)
