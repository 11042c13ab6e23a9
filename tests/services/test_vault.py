"""The vault worker against a real OpenBao dev server (the Vault HTTP API) started by the tests."""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mcp_supervisor.core import SupervisorFlags, SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.services.base import ServiceUnavailable
from mcp_supervisor.services.vault import (
    CasConflict,
    Deleted,
    NotFound,
    PermissionDenied,
    Vault,
    VaultSettings,
    factory,
)
from mcp_supervisor.telemetry import logs
from mcp_supervisor.telemetry.events import log_event
from mcp_supervisor.telemetry.sink import factory as sink_factory
from mcp_supervisor.testing import Recorder, until
from mcp_supervisor.testing.servers import BaoServer


async def admin(bao: BaoServer, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{bao.addr}/v1/{path}", json=body, headers={"X-Vault-Token": bao.TOKEN}) as r,
    ):
        assert r.status < 400 or r.status == 400, await r.text()
        return await r.json(content_type=None) if r.status != 204 else None


def vault_tree(bao: BaoServer, extra: list[WorkerSpec] | None = None, **settings: Any) -> Tree:
    cfg = {"addr": bao.addr, "token": bao.TOKEN, "timeout": 2, **settings}
    children = [*(extra or []), WorkerSpec(id="vault", run=factory(cfg))]
    return Tree(SupervisorSpec(id="root", flags=SupervisorFlags(intensity=50), children=children))


async def handle(tree: Tree) -> Vault:
    v = await tree.handle("vault", wait=10)
    assert isinstance(v, Vault)
    return v


async def test_kv2_read_write_versions_cas_conflict_and_soft_delete(bao: BaoServer) -> None:
    path = f"app/{uuid.uuid4()}"
    async with vault_tree(bao) as tree:
        v = await handle(tree)
        assert await v.detect_kv_version() == 2
        assert await v.kv_write(path, {"password": "one"}, cas=0) == 1
        with pytest.raises(CasConflict, match="check-and-set"):
            await v.kv_write(path, {"password": "two"}, cas=0)  # it exists already
        assert await v.kv_write(path, {"password": "two"}, cas=1) == 2
        assert await v.kv_read(path) == {"password": "two"}
        assert await v.kv_read(path, version=1) == {"password": "one"}
        assert path.split("/")[1] in await v.kv_list("app")
        assert await v.kv_list("nothing-here") == []  # an empty prefix is empty, not an error
        await v.kv_delete(path)
        with pytest.raises(Deleted, match="deleted"):
            await v.kv_read(path)
        with pytest.raises(NotFound):
            await v.kv_read(f"app/{uuid.uuid4()}")
        with pytest.raises(ValueError, match="invalid secret path"):
            await v.kv_read("../sys/seal")


async def test_kv1_mount(bao: BaoServer) -> None:
    mount = f"kv1-{uuid.uuid4().hex[:8]}"
    await admin(bao, "POST", f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "1"}})
    async with vault_tree(bao, mount=mount) as tree:
        v = await handle(tree)
        assert await v.detect_kv_version() == 1
        assert await v.kv_write("svc/db", {"user": "u", "pw": "p"}) is None
        assert await v.kv_read("svc/db") == {"user": "u", "pw": "p"}
        assert await v.kv_list("svc") == ["db"]
        await v.kv_delete("svc/db")
        with pytest.raises(NotFound):
            await v.kv_read("svc/db")


async def test_transit_round_trip_of_random_bytes_and_no_silent_key_creation(bao: BaoServer) -> None:
    await admin(bao, "POST", "sys/mounts/transit", {"type": "transit"})
    await admin(bao, "POST", "transit/keys/app-key", {})
    async with vault_tree(bao) as tree:
        v = await handle(tree)
        data = os.urandom(4096)
        ct = await v.encrypt("app-key", data)
        assert ct.startswith("vault:v1:") and await v.decrypt("app-key", ct) == data
        blobs = [os.urandom(n) for n in (0, 1, 100, 1000)]
        cts = await v.encrypt_many("app-key", blobs)
        assert await v.decrypt_many("app-key", cts) == blobs
        await admin(bao, "POST", "transit/keys/app-key/rotate", {})
        rewrapped = await v.rewrap("app-key", ct)
        assert rewrapped.startswith("vault:v2:") and await v.decrypt("app-key", rewrapped) == data
        with pytest.raises(NotFound, match="transit key 'app-kye' does not exist"):
            await v.encrypt("app-kye", b"typo")
        keys = await admin(bao, "LIST", "transit/keys")
        assert "app-kye" not in keys["data"]["keys"]
        with pytest.raises(TypeError, match="transit takes bytes"):
            await v.encrypt("app-key", "text")  # type: ignore[arg-type]


async def test_a_short_ttl_child_token_is_renewed(bao: BaoServer) -> None:
    created = await admin(bao, "POST", "auth/token/create", {"ttl": "3s", "explicit_max_ttl": "60s",
                                                             "renewable": True, "policies": ["default"]})  # fmt: skip
    token = created["auth"]["client_token"]
    async with vault_tree(bao, token=token) as tree:
        v = await handle(tree)
        await until(lambda: v.renewals >= 2, timeout=15, what="two renewals")
        assert v.token_error is None
        info = await v.lookup_token()
        assert info["ttl"] > 0  # still alive after more than its first TTL
        probe = await v.probe()
        assert probe is not None and probe.status in ("pass", "warn")


async def test_a_missing_token_makes_the_worker_unhealthy_not_the_daemon_down(bao: BaoServer, tmp_path: Path) -> None:
    token_file = tmp_path / "vault-token"
    async with vault_tree(bao, token="", token_file=str(token_file), token_check_interval=0.1) as tree:
        v = await handle(tree)
        probe = await v.probe()
        assert probe is not None and probe.status == "fail" and "no Vault token" in probe.output
        with pytest.raises(PermissionDenied, match="no Vault token configured"):
            await v.kv_read("x")
        token_file.write_text(bao.TOKEN)  # the credential appears (e.g. systemd LoadCredential)
        await until(lambda: v.token_error is None, what="token picked up")
        await v.kv_write("picked/up", {"ok": True})
        assert tree.child("vault").restarts == 0


async def test_no_secret_value_is_ever_logged(bao: BaoServer) -> None:
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream)
    try:
        secret = f"TOP-SECRET-{uuid.uuid4().hex}"
        sink = WorkerSpec(id="telemetry", run=sink_factory({}))
        tree = vault_tree(bao, extra=[sink])
        rec = Recorder(tree.bus)
        await admin(bao, "POST", "sys/mounts/transit2", {"type": "transit"})
        await admin(bao, "POST", "transit2/keys/k", {})
        errors: list[str] = []
        async with tree:
            v = await handle(tree)
            await v.kv_write("logged/x", {"value": secret})
            assert (await v.kv_read("logged/x"))["value"] == secret
            v.settings.transit_mount = "transit2"
            ct = await v.encrypt("k", secret.encode())
            assert await v.decrypt("k", ct) == secret.encode()
            assert await v.decrypt_many("k", await v.encrypt_many("k", [secret.encode()])) == [secret.encode()]
            for bad in (lambda: v.kv_write("logged/x", {"value": secret}, cas=99),
                        lambda: v.decrypt("k", ct[:-4] + "AAAA"), lambda: v.kv_read("logged/none")):  # fmt: skip
                try:
                    await bad()
                except Exception as e:
                    errors.append(f"{type(e).__name__}: {e}")
            log = logs.get_logger()
            for ev in rec.drain():
                log_event(log, ev)
            await asyncio.sleep(0.05)
        assert len(errors) == 3 and all(secret not in e for e in errors)
        everything = stream.getvalue() + "\n".join(errors) + "\n".join(repr(e) for e in rec.seen)
        assert secret not in everything
        assert secret.encode().hex() not in everything
        import base64

        assert base64.b64encode(secret.encode()).decode() not in everything
        assert json.loads(stream.getvalue().splitlines()[0])["level"]
    finally:
        logs.configure("info", "json")


async def test_server_killed_mid_operation_clear_errors_then_recovery(bao: BaoServer) -> None:
    async with vault_tree(bao, retries=0, timeout=1, token_check_interval=0.1) as tree:
        v = await handle(tree)
        await v.kv_write("before/kill", {"a": 1})
        bao.kill()
        with pytest.raises(ServiceUnavailable, match="unreachable"):
            async with asyncio.timeout(30):  # a hang guard: a dead server is refused at once
                await v.kv_read("before/kill")
        probe = await v.probe()
        assert probe is not None and probe.status == "fail"
        bao.start()  # dev mode: in memory, so the data is gone but the API is back
        await v.kv_write("after/restart", {"b": 2})
        assert await v.kv_read("after/restart") == {"b": 2}
        assert tree.child("vault").restarts == 0  # errors were reported, the worker never crashed


def test_settings() -> None:
    with pytest.raises(ValueError, match="addr: must start with http"):
        VaultSettings({"addr": "vault:8200"})
    with pytest.raises(ValueError, match="addr: use https in prod"):
        VaultSettings({"addr": "http://vault.internal:8200", "env": "prod"})
    assert VaultSettings({"kv_version": "1"}).kv_version == 1


async def test_a_call_on_a_handle_whose_worker_restarted_is_service_unavailable(bao: BaoServer) -> None:
    async with vault_tree(bao) as tree:
        old = await handle(tree)
        await tree.terminate_child("vault")
        await tree.restart_child("vault")
        with pytest.raises(ServiceUnavailable, match="the vault worker stopped"):
            await old.kv_read("app/x")
