"""``worker = "s3"``: object storage through one aiobotocore client, done right.

- Encryption is a setting (``AES256``, ``aws:kms`` with a key id, or ``none``: MinIO rejects AES256 without a
  KMS); objects are private by default; keys are validated.
- ``upload`` streams: multipart above a threshold with a bounded number of parts in flight, aborted on failure
  or cancellation (no orphaned multipart uploads). ``download`` streams into a temporary file, checks the length,
  then renames atomically. ``list`` walks every page (never truncated at 1,000 keys).
- ``presign`` is SigV4 only, with the expiry validated (1 s to 7 days).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from ..config.settings import Settings, read_secret_file
from ..core import ChildContext, WorkerFn
from ..health.probe import ProbeResult
from .base import Emitter, Handle, ServiceError, ServiceUnavailable, retry_connect

MIN_PART = 5 * 2**20
MAX_PART = 5 * 2**30  # S3 limits: 5 MiB..5 GiB per part, 5 TiB per object
MAX_OBJECT = 5 * 2**40
MAX_KEY_BYTES = 1024
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MAX_PRESIGN = 7 * 24 * 3600


class StorageError(ServiceError):
    """The object store refused the request; ``code`` is S3's error code."""

    def __init__(self, message: str, code: str = "") -> None:
        self.code = code
        super().__init__(message)


class NotFound(StorageError):
    pass


class NoSuchBucket(StorageError):
    pass


class AccessDenied(StorageError):
    pass


class LengthMismatch(StorageError):
    pass


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"object key must be a non-empty string, got {key!r}")
    if key.startswith("/"):
        raise ValueError(f"object key must not start with '/', got {key!r}")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"object key is longer than {MAX_KEY_BYTES} bytes")
    return key


def _map(e: Exception, what: str) -> Exception:
    if isinstance(e, EndpointConnectionError | OSError | asyncio.TimeoutError) or (
        isinstance(e, BotoCoreError) and "connect" in type(e).__name__.lower()
    ):
        return ServiceUnavailable(f"object store unreachable during {what}: {type(e).__name__}")
    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return NoSuchBucket(f"{what}: the bucket does not exist", code)
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return NotFound(f"{what}: no such object", code)
        if code in ("AccessDenied", "403", "Forbidden") or status == 403:
            return AccessDenied(f"{what}: access denied", code)
        return StorageError(f"{what} failed: {code or status}", code)
    if isinstance(e, BotoCoreError):
        return StorageError(f"{what} failed: {type(e).__name__}")
    return e


SETTINGS_KEYS = frozenset({
    "endpoint", "region", "access_key", "secret_key", "secret_key_file", "bucket", "path_style", "sse",
    "kms_key_id", "multipart_threshold", "part_size", "max_concurrency", "connect_timeout", "read_timeout",
    "retries", "create_bucket", "connect_attempts", "check_interval", "check_failures", "env", "acl",
})  # fmt: skip
"""Every key of this worker's ``config`` table."""


class S3Settings:
    def __init__(self, table: Mapping[str, Any]) -> None:
        s = Settings(table, SETTINGS_KEYS)
        self.env = s.text("env", "dev", ("prod", "test", "dev")) or "dev"
        self.endpoint = s.text("endpoint") or None
        self.region = s.text("region", "us-east-1") or "us-east-1"
        self.access_key = s.text("access_key") or None
        secret_file = s.text("secret_key_file") or None
        self.secret_key = (
            read_secret_file("secret_key_file", secret_file) if secret_file else (s.text("secret_key") or None)
        )
        bucket = s.text("bucket", max_len=63)
        if not bucket:
            raise s.error("bucket", "required")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise s.error(
                "bucket", f"must be 3-63 lowercase letters, digits, '.' or '-' (S3 bucket rules), got {bucket!r}"
            )
        self.bucket = bucket
        if self.env == "prod" and not (self.access_key and self.secret_key):
            raise s.error("access_key", "required with secret_key when env = prod")
        self.path_style = s.boolean("path_style", True)
        self.sse = s.text("sse", "none", ("none", "AES256", "aws:kms")) or "none"
        # "none" for buckets with ACLs disabled (AWS "bucket owner enforced"), which reject any other ACL
        self.acl = s.text("acl", "private", ("private", "none")) or "private"
        self.kms_key_id = s.text("kms_key_id") or None
        if self.sse == "aws:kms" and not self.kms_key_id:
            raise s.error("kms_key_id", 'required when sse = "aws:kms"')
        self.part_size = s.integer("part_size", 8 * 2**20, MIN_PART, MAX_PART)
        self.multipart_threshold = s.integer("multipart_threshold", self.part_size, MIN_PART, MAX_OBJECT)
        self.max_concurrency = s.integer("max_concurrency", 4, 1, 64)
        self.connect_timeout = s.seconds("connect_timeout", 5.0, 0.1)
        self.read_timeout = s.seconds("read_timeout", 60.0, 0.1)
        self.retries = s.integer("retries", 2, 0, 100)
        self.create_bucket = s.boolean("create_bucket", False)
        self.connect_attempts = s.integer("connect_attempts", 5, 1, 1000)
        self.check_interval = s.seconds("check_interval", 10.0, 0.05)
        self.check_failures = s.integer("check_failures", 2, 1, 1000)

    def client_config(self) -> AioConfig:
        return AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path" if self.path_style else "virtual"},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"max_attempts": self.retries + 1, "mode": "standard"},
            # S3-compatible servers (MinIO, moto) may not accept the CRC trailers botocore >= 1.36 adds by default
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=max(10, self.max_concurrency * 2),
        )

    def sse_args(self) -> dict[str, str]:
        args = {"ACL": self.acl} if self.acl != "none" else {}
        if self.sse == "none":
            return args
        args["ServerSideEncryption"] = self.sse
        if self.sse == "aws:kms" and self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args


class Storage(Handle):
    """The concurrency-safe handle of the s3 worker (one aiobotocore client, shared)."""

    service_name = "s3"

    def __init__(self, client: Any, settings: S3Settings, emitter: Emitter) -> None:
        self.client = client
        self.settings = settings
        self.bucket = settings.bucket
        self._emit = emitter
        self.aborted_uploads = 0

    async def _do(self, what: str, call: Any, **extra: Any) -> Any:
        self.check_open(what, call)
        return await self._emit.measure(
            what, call, lambda e: self.unavailable(what) if self.closed else _map(e, what), **extra
        )

    # -- upload --------------------------------------------------------------------------------------------
    async def upload(
        self,
        key: str,
        source: str | os.PathLike[str] | bytes | AsyncIterable[bytes],
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Store ``source`` (a path, bytes, or an async iterable of chunks) at ``key``."""
        check_key(key)
        extra = {"ContentType": content_type, "Metadata": dict(metadata or {}), **self.settings.sse_args()}
        if isinstance(source, bytes) and len(source) < self.settings.multipart_threshold:
            await self._do("put", self.client.put_object(Bucket=self.bucket, Key=key, Body=source, **extra),
                           bytes=len(source), direction="out")  # fmt: skip
            return {"key": key, "size": len(source), "parts": 0}
        if isinstance(source, str | os.PathLike):
            size = await asyncio.to_thread(os.path.getsize, source)
            if size < self.settings.multipart_threshold:
                data = await asyncio.to_thread(Path(source).read_bytes)
                return await self.upload(key, data, content_type, metadata)
        return await self._multipart(key, _chunks(source, self.settings.part_size), extra)

    async def _multipart(self, key: str, parts: AsyncIterator[bytes], extra: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        created = await self._do("create_multipart", self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, **extra))  # fmt: skip
        upload_id = created["UploadId"]
        done: dict[int, str] = {}
        total = 0
        slots = asyncio.Semaphore(self.settings.max_concurrency)
        tasks: set[asyncio.Task[None]] = set()
        errors: list[BaseException] = []

        async def send(number: int, body: bytes) -> None:
            try:
                resp = await self._do("upload_part", self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body),
                    bytes=len(body), direction="out")  # fmt: skip
                done[number] = resp["ETag"]
            except BaseException as e:
                errors.append(e)
                raise
            finally:
                slots.release()

        try:
            number = 0
            async for body in parts:
                await slots.acquire()  # bounds the parts (and their memory) in flight
                if errors:
                    slots.release()
                    break
                number += 1
                total += len(body)
                task = asyncio.ensure_future(send(number, body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if errors:
                raise errors[0]
            if number == 0:  # an empty source: S3 needs at least one part
                await slots.acquire()
                number = 1
                await send(1, b"")
            await self._do("complete_multipart", self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": done[n]} for n in sorted(done)]}))  # fmt: skip
        except BaseException:
            for task in list(tasks):
                task.cancel()
            await self._abort(key, upload_id)
            raise
        self._emit.op("upload", t0)
        return {"key": key, "size": total, "parts": len(done)}

    async def _abort(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload, shielded from cancellation and bounded in time."""
        self.aborted_uploads += 1
        abort = asyncio.ensure_future(
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        )
        with contextlib.suppress(Exception):
            await asyncio.wait({abort}, timeout=self.settings.connect_timeout + self.settings.read_timeout)
        if abort.done() and not abort.cancelled():
            abort.exception()

    # -- download --------------------------------------------------------------------------------------------
    async def download(self, key: str, path: str | os.PathLike[str]) -> int:
        """Stream ``key`` into a temporary file next to ``path``, check its length, then rename atomically."""
        check_key(key)
        target = Path(path)
        tmp = target.with_name(f".{target.name}.part-{os.getpid()}-{id(self)}")
        t0 = time.perf_counter()
        written = 0
        try:
            resp = await self._do("get", self.client.get_object(Bucket=self.bucket, Key=key))
            expected = int(resp["ContentLength"])
            fh = await asyncio.to_thread(open, tmp, "wb")
            try:
                async with resp["Body"] as body:
                    while chunk := await body.read(1 << 20):
                        await asyncio.to_thread(fh.write, chunk)
                        written += len(chunk)
                await asyncio.to_thread(fh.flush)
                await asyncio.to_thread(os.fsync, fh.fileno())
            finally:
                await asyncio.to_thread(fh.close)
            if written != expected:
                raise LengthMismatch(f"download of {key!r}: got {written} bytes, expected {expected}")
            await asyncio.to_thread(os.replace, tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._emit.op("download", t0, bytes=written, direction="in")
        return written

    async def open(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The object's bytes as an async stream of chunks."""
        check_key(key)
        resp = await self._do("get", self.client.get_object(Bucket=self.bucket, Key=key))
        async with resp["Body"] as body:
            while chunk := await body.read(chunk_size):
                yield chunk

    # -- the rest ----------------------------------------------------------------------------------------------
    async def delete(self, key: str) -> None:
        await self._do("delete", self.client.delete_object(Bucket=self.bucket, Key=check_key(key)))

    async def head(self, key: str) -> dict[str, Any]:
        r = await self._do("head", self.client.head_object(Bucket=self.bucket, Key=check_key(key)))
        return {"size": r.get("ContentLength"), "etag": r.get("ETag"), "content_type": r.get("ContentType"),
                "metadata": r.get("Metadata", {}), "last_modified": r.get("LastModified"),
                "sse": r.get("ServerSideEncryption")}  # fmt: skip

    async def list(self, prefix: str = "") -> AsyncIterator[dict[str, Any]]:
        """Every object under ``prefix``, page after page."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield {"key": obj["Key"], "size": obj["Size"], "etag": obj.get("ETag")}
        except (ClientError, BotoCoreError, OSError) as e:
            raise _map(e, "list") from e

    async def presign(self, method: str, key: str, expires_in: int = 3600) -> str:
        """A SigV4 URL for GET or PUT of ``key``, valid ``expires_in`` seconds (1 s to 7 days)."""
        op = {"GET": "get_object", "PUT": "put_object"}.get(method.upper())
        if op is None:
            raise ValueError(f"method: must be GET or PUT, got {method!r}")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 1 <= expires_in <= MAX_PRESIGN:
            raise ValueError(f"expires_in: must be 1..{MAX_PRESIGN} seconds (7 days), got {expires_in!r}")
        params = {"Bucket": self.bucket, "Key": check_key(key)}
        if op == "put_object":  # the uploader must then send the same SSE headers; an ACL header it need not
            params.update({k: v for k, v in self.settings.sse_args().items() if k != "ACL"})
        url: str = await self.client.generate_presigned_url(op, Params=params, ExpiresIn=expires_in)
        return url

    async def probe(self) -> ProbeResult | None:
        await self._do("head_bucket", self.client.head_bucket(Bucket=self.bucket))
        return None


async def _chunks(source: Any, size: int) -> AsyncIterator[bytes]:
    """Re-chunk any source into parts of ``size`` bytes (the last may be shorter)."""
    if isinstance(source, bytes):
        for i in range(0, len(source), size):
            yield source[i : i + size]
        return
    if isinstance(source, str | os.PathLike):
        fh = await asyncio.to_thread(open, source, "rb")
        try:
            while block := await asyncio.to_thread(fh.read, size):
                yield block
        finally:
            await asyncio.to_thread(fh.close)
        return
    buf = bytearray()
    async for piece in source:
        buf += piece
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


async def run_s3(ctx: ChildContext[Storage], settings: S3Settings) -> None:
    emitter = Emitter(ctx, "storage")
    session = get_session()
    async with session.create_client(
        "s3", endpoint_url=settings.endpoint, region_name=settings.region,
        aws_access_key_id=settings.access_key, aws_secret_access_key=settings.secret_key,
        config=settings.client_config(),
    ) as client:  # fmt: skip
        storage = Storage(client, settings, emitter)

        async def ready() -> None:
            try:
                await client.head_bucket(Bucket=settings.bucket)
            except ClientError as e:
                if settings.create_bucket and _map(e, "head_bucket").__class__ in (NotFound, NoSuchBucket):
                    await client.create_bucket(Bucket=settings.bucket)
                    return
                raise _map(e, "head_bucket") from e
            except (BotoCoreError, OSError) as e:
                raise ConnectionError(str(_map(e, "head_bucket"))) from e

        await retry_connect(ready, settings.connect_attempts, 0.1, 2.0, f"s3 {settings.endpoint or 'aws'}")
        ctx.started(storage)
        failures = 0
        try:
            while True:
                await asyncio.sleep(settings.check_interval)
                try:
                    await client.head_bucket(Bucket=settings.bucket)
                    failures = 0
                except (ClientError, BotoCoreError, OSError) as e:
                    failures += 1
                    if failures >= settings.check_failures:
                        raise _map(e, "head_bucket") from e
        finally:
            storage.closed = True


def factory(settings: Mapping[str, Any]) -> WorkerFn:
    parsed = S3Settings(settings)

    async def run(ctx: ChildContext[Any]) -> None:
        await run_s3(ctx, parsed)

    return run
