"""The s3 worker against a real HTTP S3 endpoint (moto server) started by the tests."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from mcp_supervisor.core import Backoff, ChildStarted, SupervisorFlags, SupervisorSpec, Tree, WorkerSpec
from mcp_supervisor.services.base import ServiceUnavailable
from mcp_supervisor.services.events import ServiceOperation
from mcp_supervisor.services.s3 import NotFound, S3Settings, Storage, factory
from mcp_supervisor.testing import Recorder, until
from mcp_supervisor.testing.servers import MotoServer

MB = 2**20


def s3_tree(s3: MotoServer, **settings: Any) -> Tree:
    spec = WorkerSpec(id="storage", run=factory({**s3.settings, "part_size": 5 * MB, "max_concurrency": 2,
                                                 **settings}), backoff=Backoff(initial=0.1, max=0.5, jitter=0))  # fmt: skip
    return Tree(SupervisorSpec(id="root", flags=SupervisorFlags(intensity=100), children=[spec]))


async def handle(tree: Tree) -> Storage:
    st = await tree.handle("storage", wait=10)
    assert isinstance(st, Storage)
    return st


async def stream(total: int, chunk: int = 256 * 1024, seed: int = 1) -> AsyncIterator[bytes]:
    """Deterministic pseudo-random bytes, produced chunk by chunk (never the whole object in memory)."""
    block = hashlib.sha256(str(seed).encode()).digest() * (chunk // 32)
    sent = 0
    n = 0
    while sent < total:
        piece = bytes((b + n) % 256 for b in block[:64]) + block[64 : min(chunk, total - sent)]
        piece = piece[: min(chunk, total - sent)]
        sent += len(piece)
        n += 1
        yield piece
        await asyncio.sleep(0)


async def test_a_50mb_multipart_round_trip_with_hash_check_and_bounded_memory(s3: MotoServer, tmp_path: Path) -> None:
    size = 50 * MB + 12345
    expected = hashlib.sha256()
    async for piece in stream(size):
        expected.update(piece)
    async with s3_tree(s3) as tree:
        st = await handle(tree)
        tracemalloc.start()
        try:
            result = await st.upload("big/object.bin", stream(size), content_type="application/x-test")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result["size"] == size and result["parts"] == 11
        assert peak < 40 * MB, f"upload held {peak / MB:.1f} MiB at once"  # well under the 50 MiB object
        target = tmp_path / "out.bin"
        assert await st.download("big/object.bin", target) == size
        got = hashlib.sha256()
        with open(target, "rb") as f:
            while block := f.read(MB):
                got.update(block)
        assert got.hexdigest() == expected.hexdigest()
        assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary file left
        streamed = hashlib.sha256()
        async for chunk in st.open("big/object.bin"):
            streamed.update(chunk)
        assert streamed.hexdigest() == expected.hexdigest()
        assert (await st.head("big/object.bin"))["content_type"] == "application/x-test"


async def test_cancelling_an_upload_midway_leaves_no_incomplete_multipart_upload(s3: MotoServer) -> None:
    async with s3_tree(s3) as tree:
        st = await handle(tree)
        sent = 0

        async def slow() -> AsyncIterator[bytes]:
            nonlocal sent
            async for piece in stream(40 * MB):
                sent += len(piece)
                yield piece

        task = asyncio.ensure_future(st.upload("cancel/me.bin", slow()))
        await until(lambda: sent > 15 * MB, what="upload under way")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        uploads = await st.client.list_multipart_uploads(Bucket=st.bucket)
        assert uploads.get("Uploads", []) == []
        assert st.aborted_uploads == 1
        with pytest.raises(NotFound):
            await st.head("cancel/me.bin")


@pytest.mark.timeout(120)
async def test_listing_2500_keys_returns_all_of_them(s3: MotoServer) -> None:
    async with s3_tree(s3) as tree:
        st = await handle(tree)
        sem = asyncio.Semaphore(32)

        async def put(i: int) -> None:
            async with sem:
                await st.upload(f"many/{i:05d}", b"x")

        await asyncio.gather(*(put(i) for i in range(2500)))
        keys = [o["key"] async for o in st.list("many/")]
        assert len(keys) == 2500 and keys == sorted(f"many/{i:05d}" for i in range(2500))


async def test_presigned_urls_are_sigv4_with_a_validated_expiry(s3: MotoServer) -> None:
    async with s3_tree(s3) as tree:
        st = await handle(tree)
        url = await st.presign("GET", "a/b.txt", 900)
        q = parse_qs(urlparse(url).query)
        assert q["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and q["X-Amz-Expires"] == ["900"]
        assert "X-Amz-Signature" in q and "X-Amz-Credential" in q
        put = await st.presign("PUT", "a/b.txt", 604800)
        assert parse_qs(urlparse(put).query)["X-Amz-Expires"] == ["604800"]
        for bad in (0, 604801, 1.5, True):
            with pytest.raises(ValueError, match="expires_in"):
                await st.presign("GET", "a/b.txt", bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="method"):
            await st.presign("DELETE", "a/b.txt", 60)


async def test_objects_are_private_by_default(s3: MotoServer) -> None:
    async with s3_tree(s3) as tree:
        st = await handle(tree)
        await st.upload("private/x", b"x")
        await st.upload("private/big", stream(6 * MB))
        for key in ("private/x", "private/big"):
            acl = await st.client.get_object_acl(Bucket=st.bucket, Key=key)
            assert [g["Permission"] for g in acl["Grants"]] == ["FULL_CONTROL"]  # the owner only
            assert all(g["Grantee"].get("Type") == "CanonicalUser" for g in acl["Grants"])


@pytest.mark.parametrize("sse", ["none", "AES256"])
async def test_the_sse_header_is_sent_as_configured(s3: MotoServer, sse: str) -> None:
    async with s3_tree(s3, sse=sse) as tree:
        st = await handle(tree)
        await st.upload(f"enc/{sse}", b"secret bytes")
        await st.upload(f"enc/{sse}-multi", stream(6 * MB))
        for key in (f"enc/{sse}", f"enc/{sse}-multi"):
            assert (await st.head(key))["sse"] == (None if sse == "none" else "AES256")


async def test_keys_and_settings_are_validated(s3: MotoServer) -> None:
    async with s3_tree(s3) as tree:
        st = await handle(tree)
        for bad in ("", "/abs", "x" * 1025):
            with pytest.raises(ValueError, match="object key"):
                await st.upload(bad, b"x")
        with pytest.raises(NotFound):
            await st.head("nope")
    with pytest.raises(ValueError, match="kms_key_id: required"):
        S3Settings({"bucket": "bkt", "sse": "aws:kms"})
    with pytest.raises(ValueError, match="bucket: required"):
        S3Settings({})
    with pytest.raises(ValueError, match="sse: must be one of"):
        S3Settings({"bucket": "bkt", "sse": "AES128"})
    for bad in ("b", "Upper", "a..b", "-ab", "x" * 64):
        with pytest.raises(ValueError, match="bucket: must be"):
            S3Settings({"bucket": bad})


async def test_server_killed_mid_operation_clear_errors_then_recovery(s3: MotoServer) -> None:
    tree = s3_tree(s3, check_interval=0.2, connect_attempts=1, retries=0, connect_timeout=1, read_timeout=2)
    rec = Recorder(tree.bus)
    async with tree:
        st = await handle(tree)
        await st.upload("k", b"before")
        s3.stop()
        # the server is gone; the worker's own liveness check may already have restarted it under this handle
        with pytest.raises(ServiceUnavailable, match=r"unreachable|the s3 worker stopped"):
            async with asyncio.timeout(30):  # a hang guard: a dead server is refused at once
                await st.upload("k2", b"during")
        s3.start()
        await rec.wait(lambda e: isinstance(e, ChildStarted) and e.path == "storage" and e.restarts >= 1, timeout=30)
        st = await handle(tree)
        await st.upload("k3", b"after")
        assert (await st.head("k3"))["size"] == 5
    ops = [e for e in rec.drain() if isinstance(e, ServiceOperation) and e.service == "storage"]
    assert any(e.outcome == "error" for e in ops) and any(e.bytes == 5 and e.direction == "out" for e in ops)


async def test_a_call_on_a_handle_whose_worker_restarted_is_service_unavailable(s3: MotoServer) -> None:
    async with s3_tree(s3) as tree:
        old = await handle(tree)
        await tree.terminate_child("storage")
        await tree.restart_child("storage")
        with pytest.raises(ServiceUnavailable, match="the s3 worker stopped"):
            await old.upload("k", b"x")
        assert (await handle(tree)) is not old
