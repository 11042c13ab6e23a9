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
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, assert_never

import asyncpg

from .. import __version__
from ..config.children import failover_bound, move_bound, stop_margin
from ..config.model import ClusterConfig, Singleton
from ..core import (
    FailedToStartChild,
    NoSuchPath,
    NotRunning,
    OperationError,
    SingletonKilled,
    SingletonOverlap,
    SingletonStarted,
    SingletonUnheld,
    Tree,
    describe,
)
from ..telemetry.metrics import FleetSample, SingletonSample
from .leasing import Move, allowed, decide

_PENDING = "wanted IS NOT NULL AND wanted_at > now() - make_interval(secs => {bound!r})"
"""A lease row's move is pending: asked for, not used up or cancelled, younger than move_bound() (a number from the
config, written into the text); ``{pending}`` in a statement."""

_VIEW = (
    "(SELECT coalesce(jsonb_agg(n ORDER BY n.node), '[]') FROM (SELECT node,"
    " extract(epoch FROM started_at)::float8 AS started_at, extract(epoch FROM heartbeat_at)::float8 AS heartbeat_at,"
    " version, admin, status, {live} AS live FROM {s}.nodes) n)::text AS view_nodes,"
    " (SELECT coalesce(jsonb_agg(l ORDER BY l.path), '[]') FROM (SELECT path, holder, token,"
    " extract(epoch FROM expires_at)::float8 AS expires_at, extract(epoch FROM since)::float8 AS since,"
    " expires_at > now() AS valid, CASE WHEN {pending} THEN wanted END AS wanted,"
    " CASE WHEN {pending} THEN extract(epoch FROM now() - wanted_at)::float8 END AS wanted_age"
    " FROM {s}.leases) l)::text AS view_leases"
)
"""The nodes and the leases as ``/cluster`` shows them, two JSON columns of a statement; ``{view}`` in a statement."""

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
ALTER TABLE {s}.nodes ADD COLUMN IF NOT EXISTS incarnation text NOT NULL DEFAULT '';
ALTER TABLE {s}.leases ADD COLUMN IF NOT EXISTS wanted_at timestamptz;
"""


@dataclass(slots=True)
class _Held:
    token: int
    deadline: float  # loop time by which the singleton must be stopped
    timer: asyncio.TimerHandle | None = None
    backstop: asyncio.TimerHandle | None = None  # the hard deadline: SIGKILL if it still runs then
    started: bool = False


@dataclass(frozen=True, slots=True)
class NodeRow:
    """A node of the fleet as the database last had it."""

    node: str
    version: str
    admin: str
    live: bool
    started_at: float
    heartbeat_at: float
    status: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """A singleton's lease: who holds it (None: nobody, it expired), its fencing token, and any wish to move it."""

    path: str
    holder: str | None
    token: int
    since: float
    expires_at: float
    wanted: str | None
    running_here: bool
    wanted_age: float | None = None  # seconds since the pending move was asked for
    holders: tuple[str, ...] = ()  # the live nodes that say they hold it (their rows' status): one, or an alarm
    unheld_for: float | None = None  # seconds this node has seen no holder (None while held)


@dataclass(slots=True)
class ClusterView:
    """What ``GET /cluster`` shows: the fleet as this node last read it (JSON only in the admin port's handler)."""

    node: str
    connected: bool = False
    error: str | None = None
    conflict: str | None = None  # another live daemon uses this node's name: nothing is held here meanwhile
    read_at: float | None = None
    nodes: list[NodeRow] = field(default_factory=list)
    singletons: list[LeaseRow] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sample(self, renew_failures: int) -> FleetSample:
        """What the metrics show of it."""
        live = sum(1 for n in self.nodes if n.live)
        holders = tuple((s.path, s.holder) for s in self.singletons if s.holder)
        now = time.time()
        singletons = tuple(
            SingletonSample(s.path, len(s.holders), s.unheld_for or 0.0, now - s.since if s.holder else None)
            for s in self.singletons
        )
        return FleetSample(live=live, down=len(self.nodes) - live, holders=holders, renew_failures=renew_failures,
                           singletons=singletons)  # fmt: skip


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
        self._incarnation = secrets.token_hex(8)  # this daemon's run: two daemons with one name are told apart
        self._s = cfg.schema
        self._pending = _PENDING.format(bound=float(move_bound(cfg.lease)))
        self._texts: dict[str, str] = {}  # statement templates, formatted
        self._live = f"heartbeat_at > now() - make_interval(secs => {float(cfg.lease)!r})"  # a live node's row
        self.view = ClusterView(node=cfg.node)
        self.renew_failures = 0
        self.statements = 0
        self._bound = failover_bound(cfg.lease, cfg.heartbeat)
        self._wake = asyncio.Event()  # a NOTIFY (cluster.notify): run the next heartbeat now
        self._listener: asyncpg.Connection | None = None
        self._listening = False  # a LISTEN connection is being opened
        self._channel = f"mcp_cluster_{cfg.schema}"
        self._unheld_since: dict[str, float] = {}  # path -> when this node first saw it without a holder
        self._alarmed: dict[str, set[str]] = {}  # path -> the alarms told in its current episode

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
                    # a statement that timed out is on a link that does not answer: closing politely would wait too
                    await self._disconnect(politely=not isinstance(e, TimeoutError))
                if self.cfg.notify and not self._listening:  # in the background: never delays a heartbeat
                    self._listening = True
                    self._spawn(self._listen())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, self.cfg.heartbeat - (loop.time() - began))):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            await self.stop_all("the node is stopping")
            await self._leave()
            await self._disconnect()
            await self._unlisten()

    # -- the optional wake-up: a release or a move is acted on at once, not at the next heartbeat ------------------
    async def _listen(self) -> None:
        """LISTEN on the cluster's channel, on a connection of its own (opened again when it was lost). Nothing
        depends on it for safety: a lost notification only means waiting for the heartbeat."""
        try:
            if self._listener is not None and not self._listener.is_closed():
                return
            await self._unlisten()
            conn = await asyncpg.connect(self.cfg.dsn, timeout=self._timeout, server_settings={
                "application_name": f"mcp-supervisor listen {self.cfg.node}"[:63]})  # fmt: skip
            try:
                await conn.add_listener(self._channel, self._notified)
            except BaseException:
                conn.terminate()
                raise
            self._listener = conn
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            self.log.debug("cluster: cannot listen for hand-overs", error=describe(e))
        finally:
            self._listening = False

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload != self.cfg.node:  # not our own
            self._wake.set()

    async def _unlisten(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)
            if not conn.is_closed():
                conn.terminate()

    async def _tell(self, conn: asyncpg.Connection) -> None:
        """Wake the other nodes (cluster.notify): a lease was released or a move asked for."""
        if self.cfg.notify:
            await self._q(conn, "SELECT pg_notify($1, $2)", self._channel, self.cfg.node)

    async def _leave(self) -> None:
        """A clean stop ends this run's node row (its name is free at once: a restart is not its own duplicate)."""
        if self._conn is None or self.view.conflict is not None:
            return
        with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            async with asyncio.timeout(1.0):
                await self._q(self._conn, "UPDATE {s}.nodes SET heartbeat_at = 'epoch' WHERE node = $1"
                                          " AND incarnation = $2", self.cfg.node, self._incarnation)  # fmt: skip

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
                or (before.fingerprint, before.prefer, before.nodes) != (after.fingerprint, after.prefer, after.nodes)
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

    async def _disconnect(self, politely: bool = True) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if politely:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
            if not conn.is_closed():
                conn.terminate()

    async def _q(self, conn: asyncpg.Connection, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._db:
            self.statements += 1
            text = self._texts.get(sql)
            if text is None:
                text = sql.replace("{view}", _VIEW).format(s=self._s, pending=self._pending, live=self._live)
                self._texts[sql] = text
            return list(await conn.fetch(text, *args, timeout=self._timeout))

    async def _round(self) -> None:
        """One heartbeat in 1 + (one per singleton held or tried) round trips, so that a slow link (seconds of
        latency) still renews in time: the node row, with the live nodes, the pending moves and the view as they were
        when it began; then the leases."""
        conn = await self._connect()
        node = self.cfg.node
        # the subqueries see the tables as they were before this statement's own insert: this node is added below
        rows = await self._q(
            conn,
            "WITH me AS (INSERT INTO {s}.nodes (node, started_at, heartbeat_at, version, admin, status, incarnation)"
            " VALUES ($1, to_timestamp($2), now(), $3, $4, $5::jsonb, $6)"
            " ON CONFLICT (node) DO UPDATE SET started_at = EXCLUDED.started_at, heartbeat_at = now(),"
            " version = EXCLUDED.version, admin = EXCLUDED.admin, status = EXCLUDED.status,"
            " incarnation = EXCLUDED.incarnation"
            " WHERE {s}.nodes.incarnation = EXCLUDED.incarnation"
            " OR NOT ({s}.nodes.{live}) RETURNING node)"
            " SELECT EXISTS (SELECT 1 FROM me) AS mine, ARRAY(SELECT node FROM {s}.nodes WHERE {live}) AS live,"
            " (SELECT coalesce(jsonb_object_agg(path, wanted), '{{}}') FROM {s}.leases WHERE {pending})::text"
            " AS wanted, {view}",
            node, self._started_at, __version__, self.admin, json.dumps(self._status()), self._incarnation,
        )  # fmt: skip
        if not rows[0]["mine"]:  # the name is another live daemon's: hold nothing until its row expires
            await self._name_taken(conn)
            return
        if self.view.conflict is not None:
            self.log.info("cluster: the node name is ours again", node=node)
            self.view.conflict = None
        live = {*rows[0]["live"], node}
        # a move is a one-shot wish: used up when its node holds the singleton, cancelled when that node cannot start
        # it, void after move_bound() seconds (a node that never takes it cannot keep it away from the others)
        wanted: dict[str, str] = json.loads(rows[0]["wanted"])
        for path, single in self.singletons.items():
            held = self._held.get(path)
            decision = decide(node, held is not None, wanted.get(path), live, single.prefer, single.nodes)
            match decision.move:
                case Move.HAND_OVER:
                    await self._stop(path, decision.reason())
                case Move.RENEW if held is not None:
                    await self._renew(conn, path, single, held)
                case Move.ACQUIRE:
                    await self._acquire(conn, path, single)
                case Move.WAIT | Move.RENEW:
                    pass
                case _:
                    assert_never(decision.move)
        self._apply_view(rows[0])

    def _status(self) -> dict[str, Any]:
        """This node's row's status: its tree's summary and the singletons it holds (the others count holders)."""
        return {**self._summary(), "singletons": sorted(self._held)}

    async def _name_taken(self, conn: asyncpg.Connection) -> None:
        rows = await self._q(conn, "SELECT admin, extract(epoch FROM started_at) AS started_at FROM {s}.nodes"
                                   " WHERE node = $1", self.cfg.node)  # fmt: skip
        other = ""
        if rows:
            since = time.strftime("%H:%M:%S", time.localtime(float(rows[0]["started_at"])))
            other = f" (admin {rows[0]['admin']}, started at {since})"
        why = (f"another live daemon already uses the node name {self.cfg.node!r}{other}: this one "
               "holds no singleton until that one stops; give each daemon its own [cluster] node name")  # fmt: skip
        if self.view.conflict is None:
            self.log.error("cluster: duplicate node name", node=self.cfg.node, detail=why)
        self.view.conflict = why
        await self.stop_all("its node name is another daemon's")
        await self._read_view(conn)

    async def _renew(self, conn: asyncpg.Connection, path: str, single: Singleton, held: _Held) -> None:
        sent = asyncio.get_running_loop().time()
        rows = await self._q(
            conn,
            "UPDATE {s}.leases SET expires_at = now() + make_interval(secs => $3),"
            " wanted = CASE WHEN $5 THEN NULLIF(wanted, $2) ELSE wanted END"  # a move here is used up once it runs
            " WHERE path = $1 AND holder = $2 AND token = $4 AND expires_at > now() RETURNING token",
            path, self.cfg.node, self.cfg.lease, held.token, held.started,
        )  # fmt: skip
        if not rows:
            await self._stop(path, "lost its lease")
            return
        self._arm(path, held, sent)
        if held.started and not self._present(path):  # its supervisor restarted from its spec
            held.started = False
            self._spawn(self._start(path, single, held))

    async def _acquire(self, conn: asyncpg.Connection, path: str, single: Singleton) -> None:
        """Take the lease if it expired (the database decides, by its clock); the token grows on every new holder."""
        sent = asyncio.get_running_loop().time()
        rows = await self._q(
            conn,
            "INSERT INTO {s}.leases (path, holder, token, expires_at, since)"
            " VALUES ($1, $2, 1, now() + make_interval(secs => $3), now())"
            " ON CONFLICT (path) DO UPDATE SET holder = EXCLUDED.holder, token = {s}.leases.token + 1,"
            " expires_at = EXCLUDED.expires_at, since = now() WHERE {s}.leases.expires_at <= now()"
            " RETURNING token",
            path, self.cfg.node, self.cfg.lease,
        )  # fmt: skip
        if rows:
            held = _Held(token=int(rows[0]["token"]), deadline=0.0)
            self._held[path] = held
            self._arm(path, held, sent)
            self._spawn(self._start(path, single, held))

    async def _read_view(self, conn: asyncpg.Connection) -> None:
        self._apply_view((await self._q(conn, "SELECT {view}"))[0])

    def _apply_view(self, row: asyncpg.Record) -> None:
        """The view columns of a statement (see ``_VIEW``) as ``/cluster`` shows them."""
        nodes, leases = json.loads(row["view_nodes"]), json.loads(row["view_leases"])
        self.view.nodes = [
            NodeRow(node=r["node"], version=r["version"], admin=r["admin"], live=r["live"],
                    started_at=float(r["started_at"]), heartbeat_at=float(r["heartbeat_at"]), status=r["status"])
            for r in nodes
        ]  # fmt: skip
        holding: dict[str, list[str]] = {}
        for n in self.view.nodes:
            if n.live:
                for path in n.status.get("singletons", ()):
                    holding.setdefault(path, []).append(n.node)
        now = time.monotonic()
        for path in self.singletons:
            if holding.get(path):
                self._unheld_since.pop(path, None)
            else:
                self._unheld_since.setdefault(path, now)
        self.view.singletons = [
            LeaseRow(path=r["path"], holder=r["holder"] if r["valid"] else None, token=int(r["token"]),
                     since=float(r["since"]), expires_at=float(r["expires_at"]),
                     wanted=r["wanted"],
                     wanted_age=float(r["wanted_age"]) if r["wanted_age"] is not None else None,
                     running_here=r["path"] in self._held and self._held[r["path"]].started,
                     holders=tuple(holding.get(r["path"], ())),
                     unheld_for=now - self._unheld_since[r["path"]] if r["path"] in self._unheld_since else None)
            for r in leases
            if r["path"] in self.singletons or r["valid"]
        ]  # fmt: skip
        never = sorted(set(self.singletons) - {r["path"] for r in leases})  # no node ever took its lease
        self.view.singletons += [
            LeaseRow(path=p, holder=None, token=0, since=0.0, expires_at=0.0, wanted=None, running_here=False,
                     unheld_for=now - self._unheld_since[p] if p in self._unheld_since else None)
            for p in never
        ]  # fmt: skip
        self.view.singletons.sort(key=lambda row: row.path)
        self.view.read_at = time.time()
        self._alarms(holding, now, min((n.node for n in self.view.nodes if n.live), default=self.cfg.node))

    def _alarms(self, holding: Mapping[str, list[str]], now: float, reporter: str) -> None:
        """No holder for longer than the failover bound, or more than one: told once per episode, by one node (the
        first live one by name, so that a fleet says it once)."""
        for path in self.singletons:
            told = self._alarmed.setdefault(path, set())
            nodes = tuple(sorted(holding.get(path, ())))
            unheld = now - self._unheld_since[path] if path in self._unheld_since else 0.0
            if len(nodes) == 1 or (not nodes and unheld <= self._bound):
                told.clear()  # the episode is over (or has not begun)
                continue
            alarm = "overlap" if nodes else "unheld"
            if alarm in told or reporter != self.cfg.node:
                continue
            told.add(alarm)
            if alarm == "overlap":
                self.log.error("cluster: more than one node holds a singleton", path=path, nodes=list(nodes))
                event: SingletonOverlap | SingletonUnheld = SingletonOverlap(path=path, nodes=nodes)
            else:
                self.log.error("cluster: no node holds a singleton", path=path, seconds=round(unheld, 1),
                               bound=self._bound)  # fmt: skip
                event = SingletonUnheld(path=path, seconds=round(unheld, 1), bound=self._bound)
            if self.tree.bus.active:
                self.tree.bus.emit(event)

    # -- holding a singleton ----------------------------------------------------------------------------------
    def _arm(self, path: str, held: _Held, sent: float) -> None:
        """Stop the singleton by ``sent + lease - shutdown - margin``: before the lease can expire anywhere."""
        budget = self.singletons[path].spec.shutdown_timeout or 0.0
        held.deadline = sent + self.cfg.lease - budget - stop_margin(self.cfg.lease)
        if held.timer is not None:
            held.timer.cancel()
        loop = asyncio.get_running_loop()
        held.timer = loop.call_at(held.deadline, self._overdue, path, held)
        if held.backstop is not None:
            held.backstop.cancel()
        # the stop above runs through the supervisor, which may be busy: if the process still runs half a margin
        # before the lease can expire, it is killed here, whatever the supervisor is doing
        held.backstop = loop.call_at(sent + self.cfg.lease - stop_margin(self.cfg.lease) / 2, self._kill, path, held)

    def _kill(self, path: str, held: _Held) -> None:
        """The backstop: SIGKILL the singleton's process group if this lease's incarnation still runs."""
        try:
            child = self.tree.child(path)
        except (NoSuchPath, NotRunning, OperationError):
            return
        proc = child.proc
        if proc is None or proc.exited.done() or child.spec.fencing_token != held.token:
            return
        proc.cause, proc.ended_by = "its lease's deadline passed before its stop finished", "backstop"
        proc.kill()
        self.log.error("cluster: killed a singleton at its lease's deadline", path=path, pid=proc.pid,
                       token=held.token)  # fmt: skip
        if self.tree.bus.active:
            self.tree.bus.emit(SingletonKilled(path=path, pid=proc.pid, token=held.token))

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
            await self._cancel_move(path)
            return
        if self._held.get(path) is held:
            held.started = True
            self.log.info("cluster: running a singleton", path=path, token=held.token, node=self.cfg.node)
            if self.tree.bus.active:
                self.tree.bus.emit(SingletonStarted(path=path, node=self.cfg.node, token=held.token))
        else:  # lost while it started
            await self._remove(path)

    async def _cancel_move(self, path: str) -> None:
        """A move to this node that failed: the wish is cancelled, the singleton goes where it would have gone."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return
        with contextlib.suppress(Exception):
            done = await self._q(conn, "UPDATE {s}.leases SET wanted = NULL WHERE path = $1 AND wanted = $2"
                                       " RETURNING path", path, self.cfg.node)  # fmt: skip
            if done:
                self.log.warning("cluster: a move here was cancelled: the singleton failed to start", path=path)

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
                await self._tell(conn)

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
        if not allowed(node, self.singletons[path].nodes):
            raise ValueError(f"{node!r} may not hold {path!r}: its nodes are {list(self.singletons[path].nodes)}")
        conn = await self._connect()
        await self._q(
            conn,
            "INSERT INTO {s}.leases (path, holder, token, expires_at, since, wanted, wanted_at)"
            " VALUES ($1, '', 0, now(), now(), $2, now())"
            " ON CONFLICT (path) DO UPDATE SET wanted = EXCLUDED.wanted, wanted_at = now()",
            path, node,
        )  # fmt: skip
        with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self._tell(conn)
        self._wake.set()  # and this node, which may hold it
