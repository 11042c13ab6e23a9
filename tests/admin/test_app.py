"""The admin app in process, with aiohttp's test client over a real socket and a real tree: every route, every
guard, every status code — in milliseconds, without a daemon."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer, unused_port

from mcp_supervisor.admin.seams import ReloadReport, TreePort
from mcp_supervisor.admin.server import build_app
from mcp_supervisor.config.redact import Redactor
from mcp_supervisor.core import Address, ChildContext, State, SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.testing import until

TOKEN = "an-admin-token-of-some-length"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def idle(ctx: ChildContext[Any]) -> None:
    ctx.started()
    await asyncio.Event().wait()


@dataclass
class Audit:
    """A stand-in for the structured logger (structlog's ``info(event, **kw)``): records what the app logs."""

    lines: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))


@dataclass(kw_only=True)
class Port(TreePort):
    """The bare tree's port, with a config that loads once and then is broken (or ``leak``s a secret)."""

    reloads: list[str] = field(default_factory=list)
    leak: bool = False

    def validate(self) -> str | None:
        return "supervision.toml:3: tree.intensity: must be an integer" if self.reloads else None

    async def reload(self) -> ReloadReport:
        if self.leak:
            return ReloadReport(ok=False, error="could not connect with password sekrit-value")
        self.reloads.append("reload")
        if len(self.reloads) > 1:
            return ReloadReport(ok=False, error="supervision.toml:3: tree.intensity: must be an integer")
        return ReloadReport(ok=True)


@dataclass
class Admin:
    client: TestClient[Any, Any]
    state: Port
    audit: Audit
    reloads: list[str]


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    spec = SupervisorSpec(
        id="root",
        children=[
            WorkerSpec(id="a", run=idle),
            SupervisorSpec(id="edge", children=[WorkerSpec(id="proxy", run=idle)]),
        ],
    )
    audit = Audit()
    async with Tree(spec) as tree:
        state = Port(tree=tree, log=audit, metrics_text=b"mcp_up 1\n", token=TOKEN)
        port = unused_port()
        app = build_app(
            state, state, Address.parse(f"127.0.0.1:{port}").allowed_hosts(), Redactor({"sekrit-value"}).redact_value
        )
        async with TestClient(TestServer(app, host="127.0.0.1", port=port)) as client:
            yield Admin(client, state, audit, state.reloads)


async def test_status_is_the_typed_tree_as_json(admin: Admin) -> None:
    resp = await admin.client.get("/status")
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    doc = await resp.json()
    assert doc["path"] == "" and doc["strategy"] == "one_for_one"
    assert [(c["path"], c["kind"], c["state"]) for c in doc["children"]] == [
        ("a", "worker", "running"),
        ("edge", "supervisor", "running"),
    ]
    assert doc["children"][1]["children"][0]["path"] == "edge/proxy"


async def test_livez_and_readyz_follow_the_tree_and_draining(admin: Admin) -> None:
    assert (await admin.client.get("/livez")).status == 200
    assert (await admin.client.get("/readyz")).status == 200
    await admin.state.tree.terminate_child("a")
    resp = await admin.client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["status"] == "fail"
    await admin.state.tree.restart_child("a")
    assert (await admin.client.get("/readyz")).status == 200
    admin.state.draining = True
    resp = await admin.client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["output"] == "draining"


async def test_health_without_a_monitor_reports_the_tree(admin: Admin) -> None:
    resp = await admin.client.get("/health")
    assert resp.status == 200 and resp.content_type == "application/health+json"
    assert (await resp.json())["status"] == "pass"
    resp = await admin.client.post("/health/check", headers=AUTH)
    assert resp.status == 404 and "health monitor" in (await resp.json())["error"]


async def test_metrics_and_openapi(admin: Admin) -> None:
    resp = await admin.client.get("/metrics")
    assert resp.status == 200 and await resp.read() == b"mcp_up 1\n"
    doc = await (await admin.client.get("/openapi.json")).json()
    assert "/children/{path}/{action}" in doc["paths"] or any("/children/" in p for p in doc["paths"])


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong-token-of-some-length"}, 403), ({"Authorization": "Basic x"}, 403)],
)
async def test_mutations_need_the_token_and_are_audited(admin: Admin, headers: dict[str, str], status: int) -> None:
    resp = await admin.client.post("/children/a/restart", headers=headers)
    assert resp.status == status
    if status == 401:
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert admin.state.tree.child("a").restarts == 0
    event, kw = admin.audit.lines[-1]
    assert event == "admin mutation" and kw["action"] == "restart a" and kw["outcome"] == "denied"
    assert TOKEN not in repr(admin.audit.lines)


async def test_without_a_token_configured_mutations_are_off(admin: Admin) -> None:
    admin.state.token = None
    resp = await admin.client.post("/children/a/restart", headers=AUTH)
    assert resp.status == 403 and "admin_token_file" in (await resp.json())["error"]


async def test_restart_stop_start_by_path(admin: Admin) -> None:
    tree = admin.state.tree
    resp = await admin.client.post("/children/edge/proxy/restart", headers=AUTH)
    body = await resp.json()
    assert resp.status == 200 and body["child"]["path"] == "edge/proxy" and body["child"]["restarts"] == 1
    assert body["previous_pid"] is None  # a worker has no pid
    assert (await admin.client.post("/children/a/stop", headers=AUTH)).status == 200
    assert tree.child("a").state is State.STOPPED
    resp = await admin.client.post("/children/a/stop", headers=AUTH)
    assert resp.status == 200  # stopping a stopped child is a no-op, as terminate_child
    assert (await admin.client.post("/children/a/start", headers=AUTH)).status == 200
    await until(lambda: tree.child("a").state is State.RUNNING)
    resp = await admin.client.post("/children/nope/restart", headers=AUTH)
    assert resp.status == 404 and "nope" in (await resp.json())["error"]
    assert [kw["outcome"] for _, kw in admin.audit.lines] == ["ok", "ok", "ok", "ok", "not_found"]
    assert admin.state.audit_log[-1] == ("restart nope", "not_found")


async def test_reload_answers_the_result_and_422_when_the_config_is_invalid(admin: Admin) -> None:
    resp = await admin.client.post("/reload", headers=AUTH)
    assert resp.status == 200 and (await resp.json()) == {"ok": True, "changes": []}
    resp = await admin.client.post("/reload?wait=1", headers=AUTH)
    assert resp.status == 422 and "tree.intensity" in (await resp.json())["error"]
    resp = await admin.client.post("/reload?wait=maybe", headers=AUTH)
    assert resp.status == 400 and "wait" in (await resp.json())["error"]
    assert admin.reloads == ["reload", "reload"]


async def test_reload_without_waiting_is_accepted_and_runs_unless_the_file_is_invalid(admin: Admin) -> None:
    resp = await admin.client.post("/reload?wait=0", headers=AUTH)
    assert resp.status == 202 and (await resp.json()) == {"accepted": True}
    await until(lambda: admin.reloads == ["reload"])
    resp = await admin.client.post("/reload?wait=0", headers=AUTH)  # now the file is broken: refused at once,
    assert resp.status == 422 and "tree.intensity" in (await resp.json())["error"]
    # by the reload itself (which counts, logs and alerts a refused reload), not behind the caller's back
    assert admin.reloads == ["reload", "reload"] and admin.state.audit_log[-1] == ("reload", "invalid")


@pytest.mark.parametrize(
    ("method", "path", "status", "needle"),
    [
        ("GET", "/children/a/restart", 405, "use POST"),
        ("POST", "/status", 405, "use GET"),
        ("GET", "/nowhere", 404, "not found"),
        ("GET", "/status?verbose=1", 400, "unknown query parameter 'verbose'"),
        ("POST", "/children/a/explode", 400, "unknown action 'explode'"),
        ("GET", "/", 200, ""),  # a redirect to /ui/, followed
    ],
)
async def test_routing_errors_are_json_and_name_the_problem(
    admin: Admin, method: str, path: str, status: int, needle: str
) -> None:
    resp = await admin.client.request(method, path, headers=AUTH)
    if path == "/":
        assert resp.status == 200 and str(resp.url).endswith("/ui/") and "text/html" in resp.content_type
        return
    body = await resp.json()
    assert resp.status == status and body["status"] == status and needle in body["error"], body
    if status == 405:
        assert resp.headers["Allow"]


async def test_a_foreign_host_header_is_refused(admin: Admin) -> None:
    resp = await admin.client.get("/status", headers={"Host": "attacker.example:7080"})
    assert resp.status == 421 and "loopback" in (await resp.json())["error"]


async def test_a_body_over_the_limit_is_refused(admin: Admin) -> None:
    resp = await admin.client.post("/reload", headers=AUTH, data=b"x" * (16 * 1024 + 1))
    assert resp.status == 413
    assert admin.reloads == []


async def test_responses_pass_through_the_redactor(admin: Admin) -> None:
    admin.state.leak = True
    resp = await admin.client.post("/reload", headers=AUTH)
    text = await resp.text()
    assert resp.status == 422 and "sekrit-value" not in text and "[REDACTED]" in text
