"""A postgres worker's ``config`` table, parsed once; the errors its handle raises; identifier quoting."""

from __future__ import annotations

import datetime as dt
import re
import ssl
from collections.abc import Mapping
from typing import Any

from ...config.settings import Settings, read_secret_file
from ..base import ServiceError

POOL_BY_ENV = {"prod": 20, "test": 1, "dev": 10}
SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
TENANT_ID = re.compile(r"^[a-z0-9_]+$")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PoolExhausted(ServiceError):
    """No connection became free within ``acquire_timeout``."""


class TenantError(ServiceError, ValueError):
    """An invalid tenant id (the schema name would be unsafe or truncated)."""


class ExtensionMissing(ServiceError):
    """A feature needs a PostgreSQL extension that is not installed."""


def quote_ident(name: str) -> str:
    """Quote an identifier exactly as PostgreSQL's ``quote_ident`` does."""
    return '"' + name.replace('"', '""') + '"'


def tenant_schema(tenant_id: str) -> str:
    """``tenant_<id>``: ids are ``[a-z0-9_]`` (a UUID's ``-`` becomes ``_``); the name must fit 63 bytes."""
    if not isinstance(tenant_id, str):
        raise TenantError(f"tenant id must be a string, got {type(tenant_id).__name__}")
    tid = tenant_id.strip().lower().replace("-", "_")
    if not tid or not TENANT_ID.match(tid):
        raise TenantError(f"invalid tenant id {tenant_id!r}: use letters, digits, '_' or a UUID")
    schema = f"tenant_{tid}"
    if len(schema.encode()) > 63:
        raise TenantError(f"tenant id {tenant_id!r} is too long: the schema name would exceed 63 bytes")
    return schema


def qualified(name: str) -> str:
    """A possibly schema-qualified table name, each part validated and quoted."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(IDENT.match(p) for p in parts):
        raise ValueError(f"invalid table name {name!r}: use identifiers like schema.table")
    return ".".join(quote_ident(p) for p in parts)


SETTINGS_KEYS = frozenset({
    "host", "port", "user", "password", "password_file", "database", "sslmode", "ssl_ca", "env",
    "pool_size", "min_size", "connect_timeout", "command_timeout", "acquire_timeout", "statement_cache_size",
    "pgbouncer", "connect_attempts", "check_interval", "check_failures", "close_timeout", "query_events", "reset",
})  # fmt: skip
"""Every key of this worker's ``config`` table."""


class PgSettings:
    def __init__(self, table: Mapping[str, Any]) -> None:
        s = Settings(table, SETTINGS_KEYS)
        self.env = s.text("env", "dev", ("prod", "test", "dev")) or "dev"
        self.host = s.text("host") or None
        self.port = s.port("port", 5432)
        self.user = s.text("user") or "postgres"
        password = s.text("password") or None
        password_file = s.text("password_file") or None
        if password_file:
            password = read_secret_file("password_file", password_file)
        self.password = password
        self.database = s.text("database") or "mcp_dev"
        if self.env == "prod":
            if not self.host:
                raise s.error("host", "required when env = prod (no silent localhost default)")
            if not self.password:
                raise s.error("password", "required when env = prod (set password or password_file)")
        self.host = self.host or "localhost"
        self.sslmode = s.text("sslmode", "prefer", SSLMODES) or "prefer"
        self.ssl_ca = s.text("ssl_ca") or None
        default_pool = POOL_BY_ENV[self.env]
        self.pool_size = s.integer("pool_size", default_pool, 1, 1000)
        self.min_size = min(s.integer("min_size", min(self.pool_size, 2), 0, 1000), self.pool_size)
        self.connect_timeout = s.seconds("connect_timeout", 5.0, 0.1)
        # the server's statement_timeout is an int32 of milliseconds: a day fits
        self.command_timeout = s.seconds("command_timeout", 30.0, 0.01)
        self.acquire_timeout = s.seconds("acquire_timeout", 5.0, 0.01)
        self.pgbouncer = s.boolean("pgbouncer", False)
        self.statement_cache_size = 0 if self.pgbouncer else s.integer("statement_cache_size", 100, 0, 100_000)
        self.connect_attempts = s.integer("connect_attempts", 5, 1, 1000)
        self.check_interval = s.seconds("check_interval", 2.0, 0.05)
        self.check_failures = s.integer("check_failures", 2, 1, 1000)
        self.close_timeout = s.seconds("close_timeout", 2.0, 0.0)
        self.query_events = s.text("query_events", "handle", ("handle", "all")) or "handle"
        # "auto": skip the reset round trip after statements that cannot leave session state; "always": never skip
        self.reset = s.text("reset", "auto", ("auto", "always")) or "auto"

    def ssl(self) -> Any:
        if self.sslmode in ("verify-ca", "verify-full"):
            ctx = ssl.create_default_context(cafile=self.ssl_ca)
            ctx.check_hostname = self.sslmode == "verify-full"
            return ctx
        return self.sslmode

    def describe(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"  # never the password


def interval_param(value: str | dt.timedelta, n: int = 1) -> str:
    """A parameter placeholder for an interval given as text (``'30 days'``) or as a timedelta."""
    return f"${n}::interval" if isinstance(value, dt.timedelta) else f"${n}::text::interval"
