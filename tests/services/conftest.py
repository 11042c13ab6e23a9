from __future__ import annotations

from collections.abc import Iterator

import pytest

from mcp_supervisor.testing.servers import BaoServer, MotoServer, PgServer, RedisServer, free_port, port_open


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def pg(pg_server: PgServer) -> PgServer:
    if pg_server.proc is None or pg_server.proc.poll() is not None:
        pg_server.start()
    return pg_server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def rds(redis_server: RedisServer) -> RedisServer:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    return redis_server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(moto_server: MotoServer) -> MotoServer:
    if moto_server.server is not None and (moto_server.server.poll() is not None or not port_open(moto_server.port)):
        moto_server.stop()  # it died (or an earlier test's restart lost its port): a fresh one on a fresh port
        moto_server.port = free_port()
    if moto_server.server is None:
        moto_server.start()
    return moto_server


@pytest.fixture(scope="session")
def bao_server() -> Iterator[BaoServer]:
    server = BaoServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def bao(bao_server: BaoServer) -> BaoServer:
    if bao_server.proc is None or bao_server.proc.poll() is not None:
        bao_server.start()
    return bao_server
