"""A redis worker's ``config`` table, parsed once, and the client it describes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...config.settings import Settings, read_secret_file

SETTINGS_KEYS = frozenset({
    "url", "host", "port", "db", "username", "password", "password_file", "ssl", "namespace",
    "max_connections", "socket_timeout", "connect_timeout", "pool_timeout", "retries", "connect_attempts",
    "check_interval", "check_failures", "env",
})  # fmt: skip
"""Every key of this worker's ``config`` table."""


class RedisSettings:
    def __init__(self, table: Mapping[str, Any]) -> None:
        s = Settings(table, SETTINGS_KEYS)
        self.env = s.text("env", "dev", ("prod", "test", "dev")) or "dev"
        self.url = s.text("url") or None
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise s.error("url", "must start with redis://, rediss:// or unix://")
        self.host = s.text("host") or None
        if self.env == "prod" and not (self.host or self.url):
            raise s.error("host", "required when env = prod (no silent localhost default)")
        self.host = self.host or "localhost"
        self.port = s.port("port", 6379)
        self.db = s.integer("db", 0, 0)
        self.username = s.text("username") or None
        password = s.text("password") or None
        pf = s.text("password_file") or None
        self.password = read_secret_file("password_file", pf) if pf else password
        self.ssl = s.boolean("ssl", False)
        self.namespace = s.text("namespace", "", max_len=1024) or ""
        self.max_connections = s.integer("max_connections", 20, 1, 10_000)
        self.socket_timeout = s.seconds("socket_timeout", 5.0, 0.01)
        self.connect_timeout = s.seconds("connect_timeout", 5.0, 0.01)
        self.pool_timeout = s.seconds("pool_timeout", 5.0, 0.01)
        self.retries = s.integer("retries", 2, 0, 100)
        self.connect_attempts = s.integer("connect_attempts", 5, 1, 1000)
        self.check_interval = s.seconds("check_interval", 2.0, 0.05)
        self.check_failures = s.integer("check_failures", 2, 1, 1000)

    def describe(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def client(self) -> aioredis.Redis:
        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), self.retries)
        kwargs: dict[str, Any] = {
            "socket_timeout": self.socket_timeout, "socket_connect_timeout": self.connect_timeout,
            "max_connections": self.max_connections, "timeout": self.pool_timeout, "retry": retry,
            "retry_on_error": [RedisConnectionError, RedisTimeoutError], "username": self.username,
            "password": self.password,
        }  # fmt: skip
        if self.url:
            pool = aioredis.BlockingConnectionPool.from_url(self.url, **kwargs)
        else:
            conn_class = aioredis.SSLConnection if self.ssl else aioredis.Connection
            pool = aioredis.BlockingConnectionPool(
                host=self.host, port=self.port, db=self.db, connection_class=conn_class, **kwargs
            )
        return aioredis.Redis(connection_pool=pool)
