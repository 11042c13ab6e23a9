"""``worker = "vault"``: HashiCorp Vault / OpenBao over their HTTP API with aiohttp.

Why aiohttp and not hvac: hvac is synchronous, so every call would need a thread and a client-side timeout
shorter than the caller's deadline, and a cancelled caller would leave its thread running. The API we need is
small; aiohttp gives real cancellation, one connection pool, and per-request timeouts.

- KV v1 and v2 (detected from the mount): read, write with check-and-set, delete, list, read a version.
- Transit: encrypt / decrypt / rewrap of bytes (base64 inside), batches, and no silent key creation on a typo.
- The token comes from ``token_file`` (a systemd credential) or ``token``; it is renewed at about 2/3 of its TTL
  with jitter. A missing token or a failed renewal makes the worker unhealthy and retrying; never the daemon down.
- Secret values never appear in logs, events, metrics or exception messages: errors carry the status, the path
  and Vault's error text for non-read calls only.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from ..config.settings import Settings, read_small_file
from ..core import ChildContext, WorkerFn, describe
from ..health.probe import ProbeResult
from .base import Emitter, Handle, ServiceError, ServiceUnavailable
from .events import ServiceState

NO_TOKEN = "no Vault token configured"  # noqa: S105 - a message, not a password


class VaultError(ServiceError):
    def __init__(self, message: str, status: int = 0) -> None:
        self.status = status
        super().__init__(message)


class NotFound(VaultError):
    pass


class Deleted(VaultError):
    """The secret's latest version was soft-deleted (KV v2); its data is gone until undeleted."""


class PermissionDenied(VaultError):
    pass


class Sealed(VaultError):
    pass


class Standby(VaultError):
    pass


class CasConflict(VaultError):
    """check-and-set did not match the current version."""


def _segments(path: str) -> str:
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"invalid secret path {path!r}")
    return "/".join(quote(p, safe="") for p in parts)


def _b64(data: bytes) -> str:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"transit takes bytes, got {type(data).__name__}")
    return base64.b64encode(bytes(data)).decode()


SETTINGS_KEYS = frozenset({
    "addr", "token", "token_file", "mount", "kv_version", "transit_mount", "namespace", "timeout",
    "retries", "renew", "create_transit_keys", "token_check_interval", "env",
})  # fmt: skip
"""Every key of this worker's ``config`` table."""


class VaultSettings:
    def __init__(self, table: Mapping[str, Any]) -> None:
        s = Settings(table, SETTINGS_KEYS)
        self.env = s.text("env", "dev", ("prod", "test", "dev")) or "dev"
        self.addr = (s.text("addr") or "http://127.0.0.1:8200").rstrip("/")
        if not self.addr.startswith(("http://", "https://")):
            raise s.error("addr", f"must start with http:// or https://, got {self.addr[:80]!r}")
        if self.env == "prod" and self.addr.startswith("http://") and "127.0.0.1" not in self.addr:
            raise s.error("addr", "use https in prod (tokens and secrets would cross the network in clear)")
        self.token = s.text("token") or None
        self.token_file = s.text("token_file") or None
        self.mount = (s.text("mount", "secret") or "secret").strip("/")
        version = s.text("kv_version", "auto", ("auto", "1", "2")) or "auto"
        self.kv_version: int | None = None if version == "auto" else int(version)
        self.transit_mount = (s.text("transit_mount", "transit") or "transit").strip("/")
        self.namespace = s.text("namespace") or None
        self.timeout = s.seconds("timeout", 5.0, 0.05)
        self.retries = s.integer("retries", 2, 0, 100)
        self.renew = s.boolean("renew", True)
        self.create_transit_keys = s.boolean("create_transit_keys", False)
        self.token_check_interval = s.seconds("token_check_interval", 5.0, 0.05)

    def read_token(self) -> str | None:
        if self.token_file:
            try:
                token = read_small_file(self.token_file).strip()
                if token:
                    return token
            except (OSError, ValueError):
                pass  # unreadable now: the worker stays unhealthy and looks again
        return self.token


class Vault(Handle):
    """The concurrency-safe handle of the vault worker."""

    service_name = "vault"

    def __init__(self, session: aiohttp.ClientSession, settings: VaultSettings, emitter: Emitter) -> None:
        self.session = session
        self.settings = settings
        self._emit = emitter
        self.token: str | None = settings.read_token()
        self.kv_version = settings.kv_version
        self.token_ttl: float | None = None
        self.token_expires_at: float | None = None
        self.token_error: str | None = None if self.token else NO_TOKEN
        self.renewals = 0
        self._known_keys: set[str] = set()

    # -- HTTP --------------------------------------------------------------------------------------------
    async def request(
        self, method: str, path: str, body: Any = None, *, params: Mapping[str, str] | None = None,
        operation: str = "request", secret_response: bool = False,
    ) -> Any:  # fmt: skip
        """One API call. ``secret_response``: the response carries secrets, so errors never quote its body."""
        if not self.token and not path.startswith("sys/health"):
            raise PermissionDenied(f"{operation}: no Vault token configured (token_file or token)")
        headers = {"X-Vault-Token": self.token or ""}
        if self.settings.namespace:
            headers["X-Vault-Namespace"] = self.settings.namespace
        self.check_open(operation)
        url = f"{self.settings.addr}/v1/{path}"
        idempotent = method in ("GET", "LIST")
        attempts = self.settings.retries + 1 if idempotent else 1
        t0 = time.perf_counter()
        for attempt in range(attempts):
            try:
                async with self.session.request(
                    method, url, json=body, params=params, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                ) as resp:  # fmt: skip
                    status = resp.status
                    data = await resp.json(content_type=None) if status != 204 else None
            except (aiohttp.ClientConnectionError, TimeoutError, OSError, RuntimeError) as e:
                if self.closed:  # the session closed under the call ("Session is closed")
                    self._emit.op(operation, t0, "error")
                    raise self.unavailable(operation) from None
                if isinstance(e, RuntimeError):
                    raise
                if attempt + 1 < attempts:
                    await asyncio.sleep(0.05 * 2**attempt * random.uniform(0.5, 1.5))
                    continue
                self._emit.op(operation, t0, "timeout" if isinstance(e, TimeoutError) else "error")
                raise ServiceUnavailable(f"vault {self.settings.addr} unreachable during {operation}: "
                                         f"{type(e).__name__}") from None  # fmt: skip
            if status >= 500 and status != 503 and idempotent and attempt + 1 < attempts:
                await asyncio.sleep(0.05 * 2**attempt)
                continue
            break
        if status >= 400:
            self._emit.op(operation, t0, "error")
            raise self._error(status, data, operation, path, secret_response)
        self._emit.op(operation, t0)
        return data

    def _error(self, status: int, data: Any, operation: str, path: str, secret: bool) -> VaultError:
        errors = data.get("errors", []) if isinstance(data, dict) and not secret else []
        text = "; ".join(str(e) for e in errors)[:300]
        where = f"{operation} {path.split('?', maxsplit=1)[0]}"
        if status == 404:
            return NotFound(f"{where}: not found", status)
        if status == 403:
            return PermissionDenied(f"{where}: permission denied{': ' + text if text else ''}", status)
        if status == 503:
            return Sealed(f"{where}: Vault is sealed or unavailable", status)
        if status == 429:
            return Standby(f"{where}: this Vault node is a standby", status)
        if status == 400 and "check-and-set" in text:
            return CasConflict(f"{where}: check-and-set version did not match", status)
        return VaultError(f"{where}: HTTP {status}{': ' + text if text else ''}", status)

    # -- KV ------------------------------------------------------------------------------------------------
    async def detect_kv_version(self) -> int:
        if self.kv_version is None:
            data = await self.request("GET", f"sys/internal/ui/mounts/{quote(self.settings.mount, safe='')}",
                                      operation="kv_detect")  # fmt: skip
            options = (data or {}).get("data", {}).get("options") or {}
            self.kv_version = 2 if str(options.get("version", "1")) == "2" else 1
        return self.kv_version

    async def kv_read(self, path: str, version: int | None = None) -> dict[str, Any]:
        p = _segments(path)
        m = self.settings.mount
        if await self.detect_kv_version() == 1:
            data = await self.request("GET", f"{m}/{p}", operation="kv_read", secret_response=True)
            return dict(data["data"])
        params = {"version": str(version)} if version is not None else None
        try:
            data = await self.request("GET", f"{m}/data/{p}", params=params, operation="kv_read",
                                      secret_response=True)  # fmt: skip
        except NotFound:
            meta = await self._metadata(p)
            if meta is not None:
                raise Deleted(f"kv_read {m}/{p}: the latest version is deleted or destroyed", 404) from None
            raise
        inner = data.get("data") or {}
        if inner.get("data") is None and (inner.get("metadata") or {}).get("deletion_time"):
            raise Deleted(f"kv_read {m}/{p}: this version is deleted", 404)
        return dict(inner.get("data") or {})

    async def _metadata(self, p: str) -> dict[str, Any] | None:
        try:
            data = await self.request("GET", f"{self.settings.mount}/metadata/{p}", operation="kv_metadata")
        except NotFound:
            return None
        return dict(data.get("data") or {})

    async def kv_write(self, path: str, data: Mapping[str, Any], cas: int | None = None) -> int | None:
        """Write a secret; with ``cas`` (KV v2) only if the current version is ``cas`` (0: only if absent)."""
        p = _segments(path)
        m = self.settings.mount
        if await self.detect_kv_version() == 1:
            if cas is not None:
                raise VaultError("check-and-set needs KV version 2")
            await self.request("POST", f"{m}/{p}", body=dict(data), operation="kv_write")
            return None
        body: dict[str, Any] = {"data": dict(data)}
        if cas is not None:
            body["options"] = {"cas": cas}
        resp = await self.request("POST", f"{m}/data/{p}", body=body, operation="kv_write")
        return int(resp["data"]["version"])

    async def kv_delete(self, path: str) -> None:
        """Delete (KV v2: soft-delete the latest version)."""
        p = _segments(path)
        m = self.settings.mount
        sub = "" if await self.detect_kv_version() == 1 else "data/"
        await self.request("DELETE", f"{m}/{sub}{p}", operation="kv_delete")

    async def kv_list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` ("folders" end with "/"); an empty or missing prefix lists nothing."""
        m = self.settings.mount
        p = _segments(prefix) + "/" if prefix.strip("/") else ""
        sub = "" if await self.detect_kv_version() == 1 else "metadata/"
        try:
            data = await self.request("LIST", f"{m}/{sub}{p}", operation="kv_list")
        except NotFound:
            return []
        return list(data.get("data", {}).get("keys", []))

    # -- transit -------------------------------------------------------------------------------------------
    async def _check_key(self, key: str) -> str:
        name = quote(key, safe="")
        if key in self._known_keys or self.settings.create_transit_keys:
            return name
        try:
            await self.request("GET", f"{self.settings.transit_mount}/keys/{name}", operation="transit_key")
        except NotFound:
            raise NotFound(f"transit key {key!r} does not exist (create it, or set create_transit_keys)", 404) from None
        self._known_keys.add(key)
        return name

    async def ensure_transit_mount(self) -> None:
        """Enable the transit engine if absent (with ``create_transit_keys``: a development convenience)."""
        mounts = await self.request("GET", "sys/mounts", operation="transit_mount")
        listed = (mounts or {}).get("data", mounts) or {}
        if f"{self.settings.transit_mount}/" not in listed:
            mount = quote(self.settings.transit_mount, safe="")
            await self.request("POST", f"sys/mounts/{mount}", body={"type": "transit"}, operation="transit_mount")

    async def encrypt(self, key: str, plaintext: bytes, context: bytes | None = None) -> str:
        return (await self.encrypt_many(key, [plaintext], context))[0]

    async def decrypt(self, key: str, ciphertext: str, context: bytes | None = None) -> bytes:
        return (await self.decrypt_many(key, [ciphertext], context))[0]

    async def rewrap(self, key: str, ciphertext: str, context: bytes | None = None) -> str:
        name = await self._check_key(key)
        body: dict[str, Any] = {"ciphertext": ciphertext}
        if context is not None:
            body["context"] = _b64(context)
        data = await self.request("POST", f"{self.settings.transit_mount}/rewrap/{name}", body=body,
                                  operation="transit_rewrap")  # fmt: skip
        return str(data["data"]["ciphertext"])

    async def encrypt_many(self, key: str, plaintexts: list[bytes], context: bytes | None = None) -> list[str]:
        if not plaintexts:
            return []
        name = await self._check_key(key)
        items = [{"plaintext": _b64(p), **({"context": _b64(context)} if context is not None else {})}
                 for p in plaintexts]  # fmt: skip
        data = await self.request("POST", f"{self.settings.transit_mount}/encrypt/{name}",
                                  body={"batch_input": items}, operation="transit_encrypt")  # fmt: skip
        return [self._item(r, "ciphertext", "encrypt") for r in data["data"]["batch_results"]]

    async def decrypt_many(self, key: str, ciphertexts: list[str], context: bytes | None = None) -> list[bytes]:
        if not ciphertexts:
            return []
        name = await self._check_key(key)
        items = [{"ciphertext": c, **({"context": _b64(context)} if context is not None else {})}
                 for c in ciphertexts]  # fmt: skip
        data = await self.request("POST", f"{self.settings.transit_mount}/decrypt/{name}",
                                  body={"batch_input": items}, operation="transit_decrypt",
                                  secret_response=True)  # fmt: skip
        return [base64.b64decode(self._item(r, "plaintext", "decrypt")) for r in data["data"]["batch_results"]]

    @staticmethod
    def _item(result: Mapping[str, Any], field: str, what: str) -> str:
        if result.get("error"):
            raise VaultError(f"transit {what}: an item failed ({str(result['error'])[:120]})")
        return str(result[field])

    # -- token -----------------------------------------------------------------------------------------------
    async def lookup_token(self) -> dict[str, Any]:
        data = await self.request("GET", "auth/token/lookup-self", operation="token_lookup", secret_response=True)
        info = dict(data["data"])
        self._set_ttl(float(info.get("ttl") or 0))
        return info

    def _set_ttl(self, ttl: float) -> None:
        self.token_ttl = ttl
        self.token_expires_at = time.monotonic() + ttl if ttl > 0 else None
        self._emit.emit(ServiceState(path=self._emit.path, service="vault", state="token_ttl", value=ttl))

    async def renew_token(self) -> float:
        data = await self.request("POST", "auth/token/renew-self", body={}, operation="token_renew",
                                  secret_response=True)  # fmt: skip
        ttl = float(data["auth"]["lease_duration"])
        self._set_ttl(ttl)
        self.renewals += 1
        return ttl

    async def probe(self) -> ProbeResult | None:
        data = None
        try:
            async with self.session.get(
                f"{self.settings.addr}/v1/sys/health", params={"standbyok": "true"},
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            ) as resp:  # fmt: skip
                status = resp.status
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return ProbeResult(status="fail", output=f"unreachable: {type(e).__name__}", component_type="datastore")
        if status == 503 or (isinstance(data, dict) and data.get("sealed")):
            return ProbeResult(status="fail", output="sealed", component_type="datastore")
        if self.token_error:
            return ProbeResult(status="fail", output=self.token_error, component_type="datastore")
        remaining = self.token_expires_at - time.monotonic() if self.token_expires_at is not None else None
        if remaining is not None and remaining < 60:
            return ProbeResult(
                status="warn",
                observed_value=round(remaining, 1),
                observed_unit="s",
                measurement="tokenTtl",
                output="token expires soon",
                component_type="datastore",
            )
        return ProbeResult(status="pass", observed_value=None if remaining is None else round(remaining, 1),
                           observed_unit="s", measurement="tokenTtl", component_type="datastore")  # fmt: skip


async def _token_keeper(vault: Vault, settings: VaultSettings) -> None:
    """Renew at about 2/3 of the TTL with jitter; on failure stay up, mark unhealthy, and retry with backoff."""
    backoff = 1.0
    while True:
        if not vault.token:
            vault.token = settings.read_token()
            if not vault.token:
                vault.token_error = NO_TOKEN
                await asyncio.sleep(settings.token_check_interval)
                continue
        try:
            info = await vault.lookup_token()
            ttl = float(info.get("ttl") or 0)
            vault.token_error = None
            backoff = 1.0
            if ttl <= 0 or not info.get("renewable") or not settings.renew:
                await asyncio.sleep(settings.token_check_interval if ttl <= 0 else max(1.0, ttl * 2 / 3))
                continue
            await asyncio.sleep(max(0.1, ttl * 2 / 3 * random.uniform(0.9, 1.0)))
            await vault.renew_token()
        except (VaultError, ServiceUnavailable) as e:
            vault.token_error = f"token renewal failed: {describe(e)}"
            fresh = settings.read_token()  # a rotated credential file
            if fresh and fresh != vault.token:
                vault.token = fresh
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, 60.0)


async def run_vault(ctx: ChildContext[Vault], settings: VaultSettings) -> None:
    emitter = Emitter(ctx, "vault")
    async with aiohttp.ClientSession() as session:
        vault = Vault(session, settings, emitter)
        if vault.token:
            try:
                await vault.detect_kv_version()
                if settings.create_transit_keys:
                    await vault.ensure_transit_mount()
            except (VaultError, ServiceUnavailable):
                pass  # detected lazily; the probe reports the state
        ctx.started(vault)
        try:
            await _token_keeper(vault, settings)
        finally:
            vault.closed = True


def factory(settings: Mapping[str, Any]) -> WorkerFn:
    parsed = VaultSettings(settings)

    async def run(ctx: ChildContext[Any]) -> None:
        await run_vault(ctx, parsed)

    return run
