"""Fleet mode on PostgreSQL: node rows with heartbeats, and singleton children held by leases with fencing tokens.

Every node runs one :class:`ClusterAgent`. Each heartbeat it records its node row, renews the leases it holds and
tries to take the singletons whose lease has expired. Ownership is a row of ``leases`` with an expiry decided by the
database's clock and a token that grows on every change of holder — acquisition and renewal are single statements,
so a paused process cannot keep a lease alive, and a connection that dies loses nothing but a heartbeat.

Safety does not depend on the database answering: a renewal sent at local time ``t`` makes the lease expire no
earlier than ``t + lease`` (the database's ``now()`` is later than the moment we sent), so a holder that stops its
singleton by ``t + lease - shutdown - margin`` has it stopped before any other node can take the lease. A timer per
held singleton enforces that, also after the process was paused (``SIGSTOP``): on waking, the overdue timer
stops the singleton at once. The child gets the token (``MCP_FENCING_TOKEN``, ``ctx.fencing_token``) so the
stores it writes to can refuse a late writer: ``UPDATE ... WHERE fencing_token <= $1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from . import __version__
from .config.children import stop_margin
from .config.model import ClusterConfig, Singleton
from .core import FailedToStartChild, NoSuchPath, NotRunning, OperationError, Tree, describe

_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.nodes (
    node text PRIMARY KEY,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    version text NOT NULL,
    admin text NOT NULL,
    status jsonb NOT NULL DEFAULT '{{}}'::jsonb
);
CREATE TABLE IF NOT EXISTS {s}.leases (
    path text PRIMARY KEY,
    holder text NOT NULL,
    token bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    since timestamptz NOT NULL,
    wanted text
);
"""


@dataclass(slots=True)
class _Held:
    token: int
    deadline: float  # loop time by which the singleton must be stopped
    timer: asyncio.TimerHandle | None = None
    started: bool = False


@dataclass(slots=True)
class ClusterView:
    """What ``GET /cluster`` shows: the fleet as this node last read it."""

    node: str
    connected: bool = False
    error: str | None = None
    read_at: float | None = None
    nodes: list[dict[str, Any]] = field(default_factory=list)
    singletons: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ClusterAgent:
    """This node in the fleet: heartbeats, leases and the singleton children they allow to run here."""

    def __init__(
        self,
        cfg: ClusterConfig,
        tree: Tree,
        singletons: Mapping[str, Singleton],
        *,
        admin: str,
        log: Any,
        summary: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.tree = tree
        self.singletons = dict(singletons)
        self.admin = admin
        self.log = log
        self._summary = summary or (lambda: {})
        self._conn: asyncpg.Connection | None = None
        self._db = asyncio.Lock()  # one statement at a time on the connection (heartbeat, stops, moves)
        # A busy database or host may be slow to answer: a statement may take up to half a lease (the deadline
        # timers, not these timeouts, keep the singletons safe), so a slow heartbeat is not a lost one.
        self._timeout = max(cfg.heartbeat, cfg.lease / 2)
        self._held: dict[str, _Held] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started_at = time.time()
        self._s = cfg.schema
        self.view = ClusterView(node=cfg.node)
        self.renew_failures = 0
        self.statements = 0

    # -- life --------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Heartbeat until cancelled; a database that does not answer stops nothing but the singletons."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                began = loop.time()
                try:
                    await self._round()
                    if self.view.error is not None:
                        self.log.info("cluster: the database answers again", node=self.cfg.node)
                    self.view.connected, self.view.error = True, None
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                    self.renew_failures += 1
                    if self.view.error is None:
                        self.log.warning("cluster: the database does not answer", error=describe(e))
                    self.view.connected, self.view.error = False, describe(e)
                    await self._disconnect()
                await asyncio.sleep(max(0.0, self.cfg.heartbeat - (loop.time() - began)))
        finally:
            await self.stop_all("the node is stopping")
            await self._disconnect()

    async def stop_all(self, why: str) -> None:
        for path in list(self._held):
            await self._stop(path, why)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def held(self) -> list[str]:
        """Paths of the singletons running (or starting) here."""
        return list(self._held)

    def update(self, singletons: Mapping[str, Singleton]) -> None:
        """After a reload: singletons removed or changed stop (a changed one is taken again with its new spec)."""
        old, self.singletons = self.singletons, dict(singletons)
        for path in list(self._held):
            before, after = old.get(path), self.singletons.get(path)
            if (
                after is None
                or before is None
                or (before.fingerprint, before.prefer) != (after.fingerprint, after.prefer)
            ):
                self._spawn(self._stop(path, "its config changed"))

    # -- one heartbeat -------------------------------------------------------------------------------------------
    async def _connect(self) -> asyncpg.Connection:
        async with self._db:
            return await self._connect_locked()

    async def _connect_locked(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            conn = await asyncpg.connect(
                self.cfg.dsn,
                timeout=self._timeout,
                server_settings={"application_name": f"mcp-supervisor cluster {self.cfg.node}"[:63]},
            )
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"mcp_cluster:{self._s}")
                    await conn.execute(_DDL.format(s=self._s))
            except BaseException:
                await conn.close(timeout=1)
                raise
            self._conn = conn
        return self._conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)
            if not conn.is_closed():
                conn.terminate()

    async def _q(self, conn: asyncpg.Connection, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._db:
            self.statements += 1
            return list(await conn.fetch(sql.format(s=self._s), *args, timeout=self._timeout))

    async def _round(self) -> None:
        loop = asyncio.get_running_loop()
        conn = await self._connect()
        node, lease = self.cfg.node, self.cfg.lease
        await self._q(
            conn,
            "INSERT INTO {s}.nodes (node, started_at, heartbeat_at, version, admin, status)"
            " VALUES ($1, to_timestamp($2), now(), $3, $4, $5::jsonb)"
            " ON CONFLICT (node) DO UPDATE SET started_at = EXCLUDED.started_at, heartbeat_at = now(),"
            " version = EXCLUDED.version, admin = EXCLUDED.admin, status = EXCLUDED.status",
            node, self._started_at, __version__, self.admin, json.dumps(self._summary()),
        )  # fmt: skip
        live = {
            r["node"]
            for r in await self._q(
                conn, "SELECT node FROM {s}.nodes WHERE heartbeat_at > now() - make_interval(secs => $1)", lease
            )
        }
        wanted = {r["path"]: r["wanted"] for r in await self._q(conn, "SELECT path, wanted FROM {s}.leases")}
        for path, single in self.singletons.items():
            move_to = wanted.get(path)
            if move_to is not None and move_to not in live:
                move_to = None
            preferred_alive = any(n in live for n in single.prefer) and node not in single.prefer
            held = self._held.get(path)
            if held is not None:
                if move_to not in (None, node) or (preferred_alive and move_to != node):
                    await self._stop(path, f"handing over to {move_to or 'a preferred node'}")
                    continue
                sent = loop.time()
                rows = await self._q(
                    conn,
                    "UPDATE {s}.leases SET expires_at = now() + make_interval(secs => $3)"
                    " WHERE path = $1 AND holder = $2 AND token = $4 AND expires_at > now() RETURNING token",
                    path, node, lease, held.token,
                )  # fmt: skip
                if rows:
                    self._arm(path, held, sent)
                    if held.started and not self._present(path):  # its supervisor restarted from its spec
                        held.started = False
                        self._spawn(self._start(path, single, held))
                else:
                    await self._stop(path, "lost its lease")
                continue
            if move_to not in (None, node) or preferred_alive:
                continue
            sent = loop.time()
            rows = await self._q(
                conn,
                "INSERT INTO {s}.leases (path, holder, token, expires_at, since)"
                " VALUES ($1, $2, 1, now() + make_interval(secs => $3), now())"
                " ON CONFLICT (path) DO UPDATE SET holder = EXCLUDED.holder, token = {s}.leases.token + 1,"
                " expires_at = EXCLUDED.expires_at, since = now() WHERE {s}.leases.expires_at <= now()"
                " RETURNING token",
                path, node, lease,
            )  # fmt: skip
            if rows:
                held = _Held(token=int(rows[0]["token"]), deadline=0.0)
                self._held[path] = held
                self._arm(path, held, sent)
                self._spawn(self._start(path, single, held))
        await self._read_view(conn)

    async def _read_view(self, conn: asyncpg.Connection) -> None:
        nodes = await self._q(
            conn,
            "SELECT node, extract(epoch FROM started_at) AS started_at, extract(epoch FROM heartbeat_at) AS"
            " heartbeat_at, version, admin, status::text AS status,"
            " heartbeat_at > now() - make_interval(secs => $1) AS live FROM {s}.nodes ORDER BY node",
            self.cfg.lease,
        )  # fmt: skip
        leases = await self._q(
            conn,
            "SELECT path, holder, token, extract(epoch FROM expires_at) AS expires_at, extract(epoch FROM since)"
            " AS since, wanted, expires_at > now() AS valid FROM {s}.leases ORDER BY path",
        )  # fmt: skip
        self.view.nodes = [
            {**{k: r[k] for k in ("node", "version", "admin", "live")}, "started_at": float(r["started_at"]),
             "heartbeat_at": float(r["heartbeat_at"]), "status": json.loads(r["status"])}
            for r in nodes
        ]  # fmt: skip
        self.view.singletons = [
            {"path": r["path"], "holder": r["holder"] if r["valid"] else None, "token": int(r["token"]),
             "since": float(r["since"]), "expires_at": float(r["expires_at"]), "wanted": r["wanted"],
             "running_here": r["path"] in self._held and self._held[r["path"]].started}
            for r in leases
            if r["path"] in self.singletons or r["valid"]
        ]  # fmt: skip
        self.view.read_at = time.time()

    # -- holding a singleton ----------------------------------------------------------------------------------
    def _arm(self, path: str, held: _Held, sent: float) -> None:
        """Stop the singleton by ``sent + lease - shutdown - margin``: before the lease can expire anywhere."""
        budget = self.singletons[path].spec.shutdown_timeout or 0.0
        held.deadline = sent + self.cfg.lease - budget - stop_margin(self.cfg.lease)
        if held.timer is not None:
            held.timer.cancel()
        held.timer = asyncio.get_running_loop().call_at(held.deadline, self._overdue, path, held)

    def _overdue(self, path: str, held: _Held) -> None:
        if self._held.get(path) is held:
            self.renew_failures += 1
            self._spawn(self._stop(path, "could not renew its lease in time"))

    def _present(self, path: str) -> bool:
        try:
            self.tree.child(path)
        except (NoSuchPath, NotRunning):
            return False
        return True

    async def _start(self, path: str, single: Singleton, held: _Held) -> None:
        spec = dataclasses.replace(single.spec, fencing_token=held.token)
        try:
            await self.tree.start_child(single.parent, spec)
        except (FailedToStartChild, OperationError, NoSuchPath, NotRunning) as e:
            self.log.error("cluster: a singleton failed to start here", path=path, error=describe(e))
            await self._stop(path, "it failed to start")
            return
        if self._held.get(path) is held:
            held.started = True
            self.log.info("cluster: running a singleton", path=path, token=held.token, node=self.cfg.node)
        else:  # lost while it started
            await self._remove(path)

    async def _stop(self, path: str, why: str) -> None:
        held = self._held.pop(path, None)
        if held is None:
            return
        if held.timer is not None:
            held.timer.cancel()
        await self._remove(path)
        self.log.warning("cluster: stopped a singleton", path=path, token=held.token, reason=why)
        conn = self._conn
        if conn is not None and not conn.is_closed() and why != "lost its lease":
            with contextlib.suppress(Exception):  # let the next holder take it now, not at the expiry
                await self._q(
                    conn,
                    "UPDATE {s}.leases SET expires_at = now() WHERE path = $1 AND holder = $2 AND token = $3",
                    path, self.cfg.node, held.token,
                )  # fmt: skip

    async def _remove(self, path: str) -> None:
        with contextlib.suppress(NoSuchPath, NotRunning, OperationError):
            await self.tree.terminate_child(path)
        with contextlib.suppress(NoSuchPath, NotRunning, OperationError):
            await self.tree.delete_child(path)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- operator's side ----------------------------------------------------------------------------------------
    async def move(self, path: str, node: str) -> None:
        """Ask for the singleton at ``path`` to run on ``node``: its holder hands it over at its next heartbeat."""
        if path not in self.singletons:
            raise LookupError(f"{path!r} is not a singleton")
        conn = await self._connect()
        await self._q(
            conn,
            "INSERT INTO {s}.leases (path, holder, token, expires_at, since, wanted)"
            " VALUES ($1, '', 0, now(), now(), $2) ON CONFLICT (path) DO UPDATE SET wanted = EXCLUDED.wanted",
            path, node,
        )  # fmt: skip
