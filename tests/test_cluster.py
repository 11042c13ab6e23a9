"""Fleet mode against a private PostgreSQL: three daemons, one singleton OS child writing through its fencing token.

Exactly one node runs it; ``kill -9`` of the holder's daemon and ``SIGSTOP`` past the lease hand it over within the
bound; the paused holder stops its copy as soon as it wakes and its late writes are refused by the token; with the
database down every node stops the singleton before its lease could expire while the other children keep running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mcp_supervisor.testing import alive, wait_until
from mcp_supervisor.testing.daemon import Daemon
from mcp_supervisor.testing.faults import FaultProxy
from mcp_supervisor.testing.servers import PgServer

pytestmark = [pytest.mark.realtime, pytest.mark.servers, pytest.mark.timeout(180)]

WRITER = str(Path(__file__).resolve().parents[1] / "examples" / "fenced_writer.py")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
LEASE, HEARTBEAT = 3.0, 0.5
NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    server = PgServer()
    server.start()
    yield server
    server.cleanup()


def dsn(pg: PgServer) -> str:
    return f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"


def toml(
    pg: PgServer,
    node: str,
    schema: str,
    prefer: str = "",
    *,
    via: int | None = None,
    lease: float = LEASE,
    heartbeat: float = HEARTBEAT,
) -> str:
    """A node's config; ``via``: the port of a fault proxy its fleet traffic goes through (the singleton writes
    directly, so a cut node's late writes would show in the fenced log)."""
    cluster_dsn = dsn(pg) if via is None else f"postgresql://postgres@127.0.0.1:{via}/postgres"
    return f"""
[cluster]
dsn = "{cluster_dsn}"
node = "{node}"
lease = {lease}
heartbeat = {heartbeat}
schema = "{schema}"

[tree]
intensity = 100
period = 5

[[tree.children]]
id = "local"
command = ["sleep", "1000"]

[[tree.children]]
id = "writer"
singleton = true
shutdown = 0.5
command = ["{sys.executable}", "{WRITER}", "{dsn(pg)}", "{node}"]
{prefer}"""


@pytest.fixture
def fleet(pg: PgServer, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Daemon]]:
    schema = f"fleet_{os.getpid()}_{int(time.monotonic() * 1000) % 10**6}"
    prefer = getattr(request, "param", "")
    query(pg, "DROP TABLE IF EXISTS fenced, fenced_log")
    nodes: list[Daemon] = []
    try:  # a node that fails to start must not leave the others running
        for name in NAMES:
            (tmp_path / name).mkdir()
            nodes.append(Daemon(tmp_path / name, toml(pg, name, schema, prefer)))
        for d in nodes:
            d.wait_ready()
        yield nodes
    finally:
        for d in nodes:
            if d.proc.poll() is None:
                os.kill(d.proc.pid, signal.SIGCONT)
            d.stop()


def query(pg: PgServer, sql: str, *args: Any) -> list[Any]:
    """The rows of one statement, on a connection of its own."""

    async def run() -> list[Any]:
        conn = await asyncpg.connect(dsn(pg))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def fenced_log(pg: PgServer) -> list[Any]:
    """Every write the singletons tried, in time order: node, token, at (epoch seconds), accepted (none before the
    first writer created its tables)."""
    try:
        return query(
            pg, "SELECT node, token, extract(epoch FROM at)::float8 AS at, accepted FROM fenced_log ORDER BY at"
        )
    except asyncpg.UndefinedTableError:
        return []


def running(d: Daemon) -> int | None:
    """The pid of the singleton when it runs on this node."""
    if d.proc.poll() is not None:
        return None
    try:
        node = d.node("writer")
    except KeyError:
        return None
    return node["pid"] if node["state"] == "running" else None


def holders(nodes: list[Daemon]) -> list[Daemon]:
    return [d for d in nodes if running(d) is not None]


def the_holder(nodes: list[Daemon]) -> Daemon:
    found: Daemon = wait_until(lambda: (h := holders(nodes)) and len(h) == 1 and h[0], what="exactly one holder")
    return found


def accepted_tokens_never_go_back(pg: PgServer) -> list[Any]:
    rows = fenced_log(pg)
    tokens = [r["token"] for r in rows if r["accepted"]]
    assert tokens == sorted(tokens), "an older holder's write was accepted after a newer one's"
    return rows


def test_exactly_one_node_runs_the_singleton_and_kill_9_of_its_daemon_fails_over(
    fleet: list[Daemon], pg: PgServer
) -> None:
    first = the_holder(fleet)
    assert all(d.node("local")["state"] == "running" for d in fleet)

    def view() -> dict[str, Any]:
        code, doc, _ = fleet[0].request("GET", "/cluster")
        assert code == 200
        return doc  # type: ignore[no-any-return]

    wait_until(lambda: {n["node"] for n in view()["nodes"] if n["live"]} == set(NAMES), what="three live nodes")
    single = next(s for s in view()["singletons"] if s["path"] == "writer")
    assert single["holder"] == NAMES[fleet.index(first)] and single["running_here"] == (first is fleet[0])
    token = single["token"]
    killed_at = time.monotonic()
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    second = wait_until(lambda: (h := holders([d for d in fleet if d is not first])) and h[0], timeout=30,
                        what="another node to take over")  # fmt: skip
    took = time.monotonic() - killed_at
    assert took < LEASE + 10, f"takeover took {took:.1f}s"
    assert len(holders(fleet)) == 1
    wait_until(lambda: any(r["token"] > token for r in fenced_log(pg)), what="the new holder's writes")
    accepted_tokens_never_go_back(pg)
    assert "mcp_singleton_holder" in second.metrics()


def test_a_paused_holder_is_replaced_and_stops_its_copy_as_soon_as_it_wakes(fleet: list[Daemon], pg: PgServer) -> None:
    first = the_holder(fleet)
    pid = running(first)
    assert pid is not None
    os.kill(first.proc.pid, signal.SIGSTOP)
    others = [d for d in fleet if d is not first]
    wait_until(lambda: holders(others), timeout=30, what="another node to take over from the paused one")
    assert alive(pid)  # the paused daemon's child still runs: only its token keeps it from doing harm
    os.kill(first.proc.pid, signal.SIGCONT)
    wait_until(lambda: not alive(pid), timeout=10, what="the woken node to stop its copy")
    assert len(holders(fleet)) == 1
    rows = accepted_tokens_never_go_back(pg)
    late = [r for r in rows if not r["accepted"]]
    assert all(r["token"] < max(x["token"] for x in rows) for r in late)  # refused writes are the old token's


def test_with_the_database_down_singletons_stop_and_local_children_keep_running(
    fleet: list[Daemon], pg: PgServer
) -> None:
    holder = the_holder(fleet)
    locals_before = {id(d): d.node("local")["pid"] for d in fleet}
    pg.kill()
    try:
        stopped_at = wait_until(lambda: not holders(fleet) and time.monotonic(), timeout=LEASE + 10,
                                what="the singleton stopped everywhere")  # fmt: skip
        assert stopped_at
        assert {id(d): d.node("local")["pid"] for d in fleet} == locals_before
        # the singleton stops at its deadline, which may come before the heartbeat's statement times out: the node
        # then says the database is unreachable within that timeout
        view = wait_until(lambda: (v := holder.request("GET", "/cluster")[1])["connected"] is False and v,
                          timeout=LEASE + 10, what="the holder to see the database down")  # fmt: skip
        assert view["error"]
        code, ready, _ = holder.request("GET", "/readyz")
        assert code == 200 and ready["cluster"].startswith("database unreachable: ")
    finally:
        pg.start()
    the_holder(fleet)


def test_ctl_shows_the_fleet_and_moves_a_singleton_without_ever_running_two(fleet: list[Daemon], pg: PgServer) -> None:
    first = the_holder(fleet)
    target = next(d for d in fleet if d is not first)
    name = NAMES[fleet.index(target)]
    cli = [sys.executable, "-m", "mcp_supervisor.cli", "ctl", "--admin", target.admin,
           "--token-file", str(target.token_file)]  # fmt: skip
    held = f"held by {NAMES[fleet.index(first)]}"
    out = wait_until(lambda: held in (o := subprocess.run([*cli, "cluster", "status"], capture_output=True, text=True,
                                                          check=True).stdout) and o, what="the holder in ctl's view")  # fmt: skip
    assert out.splitlines()[0] == f"node {name}: connected"
    assert f"writer               held by {NAMES[fleet.index(first)]}" in out
    done = subprocess.run([*cli, "cluster", "move", "writer", name], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 30
    while running(target) is None:
        assert len(holders(fleet)) <= 1, "two nodes ran the singleton during a move"
        assert time.monotonic() < deadline, "the singleton did not move"
    assert holders(fleet) == [target]
    accepted_tokens_never_go_back(pg)


def test_the_holder_s_database_connection_killed_by_the_server_changes_nothing(
    fleet: list[Daemon], pg: PgServer
) -> None:
    first = the_holder(fleet)
    pid = running(first)
    name = NAMES[fleet.index(first)]
    application = f"mcp-supervisor cluster {name}"
    killed = query(
        pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", application
    )
    assert len(killed) == 1
    # the agent sees its connection closed and opens another at its next heartbeat, renewing in time
    count = "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1"
    wait_until(lambda: query(pg, count, application)[0]["n"] == 1, timeout=30, what="a reconnection")
    token = lease_row(first)["token"]
    renewed = time.monotonic()
    wait_until(lambda: time.monotonic() - renewed > LEASE and running(first) == pid, timeout=LEASE + 10,
               what="a whole lease later, still the same process")  # fmt: skip
    assert holders(fleet) == [first]
    assert lease_row(first)["token"] == token


@pytest.mark.parametrize("fleet", ['prefer = ["c"]\n'], indirect=True)
def test_a_preferred_node_gets_the_singleton_back_when_it_returns(fleet: list[Daemon], pg: PgServer) -> None:
    c = fleet[2]
    wait_until(lambda: holders(fleet) == [c], what="the preferred node to hold it")
    os.kill(c.proc.pid, signal.SIGKILL)
    c.proc.wait()
    wait_until(lambda: holders(fleet[:2]), timeout=30, what="a takeover while the preferred node is down")
    c.stop()
    where = c.tmp.parent / "c-again"
    where.mkdir()
    d = Daemon(where, c.config.read_text().split("\n\n", 1)[1])
    fleet[2] = d
    d.wait_ready()
    deadline = time.monotonic() + 60
    while running(d) is None:
        assert len(holders(fleet)) <= 1, "two nodes ran the singleton during the hand-back"
        assert time.monotonic() < deadline, "the singleton did not come back to the preferred node"
    assert holders(fleet) == [d]
    accepted_tokens_never_go_back(pg)


@pytest.mark.parametrize("fleet", ['nodes = ["b", "c*"]\n'], indirect=True)
def test_only_the_allowed_nodes_hold_a_singleton_and_a_move_elsewhere_is_refused(
    fleet: list[Daemon], pg: PgServer
) -> None:
    a = fleet[0]
    first = the_holder(fleet)
    assert first is not a
    cli = [sys.executable, "-m", "mcp_supervisor.cli", "ctl", "--admin", a.admin, "--token-file", str(a.token_file)]
    done = subprocess.run([*cli, "cluster", "move", "writer", "a"], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "'a' may not hold 'writer': its nodes are ['b', 'c*']" in done.stderr, done
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    deadline = time.monotonic() + LEASE * 6
    while not holders(fleet):  # the other allowed node takes over; a, alive and willing, never does
        assert running(a) is None
        assert time.monotonic() < deadline, "the other allowed node did not take over"
    assert holders(fleet) not in ([a], [first])
    assert running(a) is None
    accepted_tokens_never_go_back(pg)


def alert_receiver(tmp: Path) -> tuple[str, Path]:
    """An ``[[daemon.alerts]]`` table whose command appends each alert (JSON on stdin) to a file."""
    out = tmp / "alerts.jsonl"
    table = f'\n[[daemon.alerts]]\nname = "pager"\nexec = ["sh", "-c", "cat >> {out}; echo >> {out}"]\n'
    return table, out


def alerts_in(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []


def metric(d: Daemon, name: str, path: str = "writer") -> float | None:
    for line in d.metrics().splitlines():
        if line.startswith(f'{name}{{path="{path}"}} '):
            return float(line.split()[-1])
    return None


@pytest.mark.parametrize("fleet", ['nodes = ["z"]\n'], indirect=True)
def test_a_singleton_no_node_may_hold_raises_one_alarm_in_the_fleet(fleet: list[Daemon], pg: PgServer) -> None:
    """No live node may hold it: past the failover bound (lease + 3 heartbeats) the first live node by name says so,
    once, and every node's metrics show it unheld."""
    a, b, c = fleet
    bound = LEASE + 3 * HEARTBEAT
    said = wait_until(lambda: a.events("SingletonUnheld"), timeout=bound * 4, what="the alarm")
    assert said[0]["path"] == "writer" and said[0]["seconds"] >= bound and said[0]["bound"] == bound
    for d in fleet:
        wait_until(lambda d=d: (metric(d, "mcp_singleton_unheld_seconds") or 0) > bound, what="the unheld metric")
        assert metric(d, "mcp_singleton_holders") == 0.0 and metric(d, "mcp_lease_age_seconds") is None
        row = next(s for s in d.request("GET", "/cluster")[1]["singletons"] if s["path"] == "writer")
        assert row["holders"] == [] and row["holder"] is None and row["token"] == 0  # never taken: listed anyway
    began = a.request("GET", "/cluster")[1]["read_at"]
    wait_until(lambda: a.request("GET", "/cluster")[1]["read_at"] > began + 2 * HEARTBEAT, what="two more heartbeats")
    assert len(a.events("SingletonUnheld")) == 1  # once per episode
    assert b.events("SingletonUnheld") == [] and c.events("SingletonUnheld") == []  # one node tells the fleet
    assert any(e.get("event") == "cluster: no node holds a singleton" for e in a.log_events())


def test_two_nodes_saying_they_hold_a_singleton_raise_an_alert(pg: PgServer, tmp_path: Path) -> None:
    """A second live node row that says it holds the singleton (a foreign or broken node, written into the table
    here): the holder counts two, raises the alarm and its alert once, and clears it when that row goes."""
    schema = f"overlap_{os.getpid()}_{int(time.monotonic() * 1000) % 10**6}"
    table, out = alert_receiver(tmp_path)
    d = Daemon(tmp_path, toml(pg, "a", schema) + table)
    try:
        d.wait_ready()
        wait_until(lambda: running(d), timeout=30, what="the singleton running")
        wait_until(lambda: metric(d, "mcp_singleton_holders") == 1.0, what="one holder counted")
        assert (metric(d, "mcp_lease_age_seconds") or 0) >= 0
        query(pg, f"INSERT INTO {schema}.nodes (node, started_at, heartbeat_at, version, admin, status)"
                  " VALUES ('zz', now(), now() + interval '1 hour', 'x', 'x', '{\"singletons\": [\"writer\"]}')")  # fmt: skip
        said = wait_until(lambda: d.events("SingletonOverlap"), timeout=10, what="the overlap alarm")
        assert said[0]["nodes"] == ["a", "zz"]
        assert metric(d, "mcp_singleton_holders") == 2.0
        assert lease_row(d)["holders"] == ["a", "zz"]
        alert = wait_until(lambda: [x for x in alerts_in(out) if x["event"] == "singleton-overlap"], timeout=10,
                           what="the alert")[0]  # fmt: skip
        assert alert["severity"] == "critical" and alert["title"] == "writer runs on more than one node"
        assert alert["text"] == "2 nodes say they hold it: a, zz"
        query(pg, f"DELETE FROM {schema}.nodes WHERE node = 'zz'")
        wait_until(lambda: metric(d, "mcp_singleton_holders") == 1.0, what="one holder again")
        assert len(d.events("SingletonOverlap")) == 1
    finally:
        d.stop()


def test_with_notify_a_move_is_acted_on_at_once_not_at_the_next_heartbeat(pg: PgServer, tmp_path: Path) -> None:
    """cluster.notify: a move wakes the holder, whose release wakes the target — three hand-overs back and forth,
    each in round trips, while without it the target acts at its next heartbeat (2 s apart here: 1 s on average)."""
    took: dict[bool, list[float]] = {False: [], True: []}
    for notify in (False, True):
        schema = f"notify_{int(notify)}_{os.getpid()}_{int(time.monotonic() * 1000) % 10**6}"
        nodes = []
        for name in ("a", "b"):
            (tmp_path / f"{name}{int(notify)}").mkdir()
            text = toml(pg, name, schema, lease=6.0, heartbeat=2.0).replace(
                "heartbeat = 2.0", f"heartbeat = 2.0\nnotify = {str(notify).lower()}"
            )
            nodes.append(Daemon(tmp_path / f"{name}{int(notify)}", text))
        try:
            for d in nodes:
                d.wait_ready()
            for _ in range(3):
                holder = the_holder(nodes)
                target = next(d for d in nodes if d is not holder)
                began = time.monotonic()
                code, body, _ = holder.request("POST", f"/cluster/move?path=writer&node={'ab'[nodes.index(target)]}")
                assert code == 200, body
                while running(target) is None:  # on every look: never two
                    assert len(holders(nodes)) <= 1
                    assert time.monotonic() - began < 30, "the move did not happen"
                took[notify].append(time.monotonic() - began)
        finally:
            for d in nodes:
                d.stop()
    assert max(took[True]) < 1.0, took  # without notify each has an even chance to take longer than that
    record("move with and without notify", with_notify_s=[round(t, 3) for t in took[True]],
           without_notify_s=[round(t, 3) for t in took[False]], heartbeat_s=2.0)  # fmt: skip


CHAOS_SECONDS = float(os.environ.get("MCP_CHAOS_SECONDS", "40"))  # e.g. 180 for the 3-minute run


@pytest.mark.timeout(CHAOS_SECONDS * 2 + 240)
def test_chaos_of_kills_pauses_network_faults_and_database_restarts_never_lets_two_holders_write(
    pg: PgServer, tmp_path: Path
) -> None:
    """Random kill -9, SIGSTOP past the lease, network faults on one node's link (cut, slow, reset) and PostgreSQL
    restarts for a bounded time; afterwards the writes prove that no two holders ever wrote with valid tokens at
    once, and that each outage of the singleton was bounded."""
    seed = int(os.environ.get("MCP_CHAOS_SEED") or int.from_bytes(os.urandom(4), "big"))  # a failure says its seed
    rng = random.Random(seed)
    schema = f"chaos_{os.getpid()}_{seed % 10**6}"
    query(pg, "DROP TABLE IF EXISTS fenced, fenced_log")
    nodes: dict[str, Daemon] = {}
    links = {name: FaultProxy(pg.port) for name in NAMES}  # each node's fleet traffic

    def launch(name: str) -> None:
        where = tmp_path / f"{name}-{time.monotonic_ns()}"
        where.mkdir()
        nodes[name] = Daemon(where, toml(pg, name, schema, via=links[name].port))
        nodes[name].wait_ready()

    for name in NAMES:
        launch(name)
    outages: list[tuple[float, float]] = []  # wall-clock windows with the database down
    actions: list[str] = []
    try:
        the_holder(list(nodes.values()))
        end = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < end:
            action = rng.choice(["kill", "pause", "database", "cut", "slow", "reset"])
            name = rng.choice(NAMES)
            actions.append(f"{action} {name}")
            if action == "kill":
                nodes[name].proc.kill()
                nodes[name].stop()
                launch(name)
            elif action in ("cut", "slow", "reset"):
                link = links[name]
                if action == "cut":
                    link.blackhole()
                elif action == "slow":
                    link.delay(rng.uniform(0.2, 1.0))
                else:
                    link.reset()
                time.sleep(LEASE * rng.uniform(0.3, 2.0))  # how long the link stays broken: the fault itself
                link.heal()
            elif action == "pause":
                os.kill(nodes[name].proc.pid, signal.SIGSTOP)
                time.sleep(LEASE * rng.uniform(0.5, 2.0))  # the pause itself is the fault being injected
                os.kill(nodes[name].proc.pid, signal.SIGCONT)
            else:
                began = time.time()
                pg.kill()
                time.sleep(rng.uniform(0.5, 3.0))  # the outage's length is the fault being injected
                pg.start()
                outages.append((began, time.time()))
            time.sleep(rng.uniform(0.5, 2.0))  # time between faults, part of the scenario
        the_holder(list(nodes.values()))
        settled = len(fenced_log(pg))
        wait_until(lambda: len(fenced_log(pg)) > settled + 5, what="the settled holder's writes")
        rows = fenced_log(pg)
    finally:
        for link in links.values():
            link.heal()
        for d in nodes.values():
            if d.proc.poll() is None:
                os.kill(d.proc.pid, signal.SIGCONT)
            d.stop()
        for link in links.values():
            link.close()
    context = f"seed {seed}, actions {actions}"
    accepted = [(r["token"], r["at"]) for r in rows if r["accepted"]]
    assert accepted, context
    tokens = [t for t, _ in accepted]
    assert tokens == sorted(tokens), f"an older holder's write was accepted after a newer one's ({context})"
    spans: dict[int, tuple[float, float]] = {}
    for token, at in accepted:
        first, _ = spans.get(token, (at, at))
        spans[token] = (first, at)
    ordered = sorted(spans.values())
    for (_, end1), (start2, _) in itertools.pairwise(ordered):
        assert end1 <= start2, f"two tokens' accepted writes overlap ({context})"
    bound = LEASE + 2 * HEARTBEAT + 5.0  # lease, a heartbeat to notice, the writer's start, a busy machine's slack
    longest = 0.0
    for (_, a), (_, b) in itertools.pairwise(accepted):
        near_outage = any(a <= end + LEASE + 5 and b >= began for began, end in outages)
        if not near_outage:
            assert b - a <= bound, f"the singleton was down {b - a:.1f}s > {bound:.1f}s ({context})"
            longest = max(longest, b - a)
    kinds = collections.Counter(a.split()[0] for a in actions)
    print(
        f"chaos: seed {seed}, {dict(kinds)}, {len(spans)} holders (tokens), {len(accepted)} accepted and "
        f"{len(rows) - len(accepted)} refused writes, longest outage outside database restarts {longest:.2f}s"
    )


def test_a_reload_leaves_a_running_singleton_alone_unless_its_table_changed(fleet: list[Daemon], pg: PgServer) -> None:
    holder = the_holder(fleet)
    pid = running(holder)
    assert pid is not None
    code, doc, _ = holder.request("POST", "/reload?wait=1")
    assert code == 200 and doc["ok"] and doc["changes"] == [], doc
    assert running(holder) == pid and alive(pid)
    token = wait_until(lambda: max((r["token"] for r in fenced_log(pg)), default=0), what="the singleton's writes")
    for d in fleet:  # the same new setting on every node
        d.config.write_text(d.config.read_text().replace("shutdown = 0.5\n", 'shutdown = 0.5\nenv = { GEN = "2" }\n'))
        code, doc, _ = d.request("POST", "/reload?wait=1")
        assert code == 200 and doc["ok"], doc
    wait_until(lambda: not alive(pid), what="the old singleton stopped")
    wait_until(lambda: any(r["token"] > token for r in fenced_log(pg)), what="the new one writing")
    assert len(holders(fleet)) == 1
    accepted_tokens_never_go_back(pg)


def test_a_singleton_comes_back_when_its_supervisor_restarts_from_its_spec(pg: PgServer, tmp_path: Path) -> None:
    d = Daemon(tmp_path, f"""
[cluster]
dsn = "{dsn(pg)}"
node = "solo"
lease = {LEASE}
heartbeat = {HEARTBEAT}
schema = "solo_{os.getpid()}"

[tree]
intensity = 10
[[tree.children]]
id = "grp"
intensity = 0
[[tree.children.children]]
id = "a"
command = ["sleep", "1000"]
[[tree.children.children]]
id = "s"
singleton = true
shutdown = 0.5
command = ["sleep", "1000"]
""")  # fmt: skip
    try:
        d.wait_ready()
        first = wait_until(lambda: _state(d, "grp/s") == "running" and d.node("grp/s")["pid"], what="the singleton")
        os.kill(d.node("grp/a")["pid"], signal.SIGKILL)  # grp gives up (intensity 0); root restarts it from its spec
        wait_until(lambda: d.node("grp")["restarts"] == 1, what="grp restarted")
        second = wait_until(lambda: _state(d, "grp/s") == "running" and d.node("grp/s")["pid"], timeout=20,
                            what="the singleton started again in the new grp")  # fmt: skip
        assert second != first and not alive(first)
        single = next(s for s in d.request("GET", "/cluster")[1]["singletons"] if s["path"] == "grp/s")
        assert single["holder"] == "solo" and single["token"] == 1  # the same lease all along
    finally:
        d.stop()


def _state(d: Daemon, path: str) -> str | None:
    try:
        return str(d.node(path)["state"])
    except KeyError:
        return None


def test_a_second_daemon_with_the_same_node_name_holds_nothing(pg: PgServer, tmp_path: Path) -> None:
    schema = f"dup_{os.getpid()}_{int(time.monotonic() * 1000) % 10**6}"
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = Daemon(tmp_path / "first", toml(pg, "a", schema))
    first.wait_ready()
    second: Daemon | None = None
    try:
        wait_until(lambda: running(first), timeout=30, what="the first daemon running the singleton")
        second = Daemon(tmp_path / "second", toml(pg, "a", schema))  # a cloned VM: the same host name
        second.wait_ready()

        def conflict() -> str | None:
            assert second is not None
            return second.request("GET", "/cluster")[1].get("conflict")  # type: ignore[no-any-return]

        said = wait_until(conflict, timeout=LEASE * 3, what="the second daemon to see the name is taken")
        assert "another live daemon already uses the node name 'a'" in said and first.admin in said
        code, ready, _ = second.request("GET", "/readyz")
        assert code == 503 and ready["cluster"] == said
        began = second.request("GET", "/cluster")[1]["read_at"]

        def two_leases_later() -> bool:  # every look on the way: it never runs the singleton, the first one does
            assert second is not None
            assert running(second) is None and running(first) is not None
            return bool(second.request("GET", "/cluster")[1]["read_at"] >= began + 2 * LEASE)

        wait_until(two_leases_later, timeout=LEASE * 6, what="two leases of the second daemon's heartbeats")
        assert any(e.get("event") == "cluster: duplicate node name" for e in second.log_events())
        assert first.request("GET", "/cluster")[1].get("conflict") is None

        assert first.stop() == 0  # the first one leaves: its name is free at once, the second takes over
        wait_until(lambda: conflict() is None and running(second), timeout=LEASE * 4,
                   what="the second daemon to hold the singleton once the name is free")  # fmt: skip
    finally:
        if first.proc.poll() is None:
            first.stop()
        if second is not None:
            second.stop()


def test_the_backstop_kills_a_singleton_whose_stop_is_stuck_behind_its_supervisor(pg: PgServer, tmp_path: Path) -> None:
    """The holder loses the database while its supervisor is busy (a sibling's restart waits 20 s for readiness):
    the stop it asks for waits in the supervisor's queue, so the backstop kills the singleton's process itself,
    before the lease could expire anywhere."""
    schema = f"backstop_{os.getpid()}_{int(time.monotonic() * 1000) % 10**6}"
    once = tmp_path / "slow-once"  # ready at once the first time; a restart then waits 20 s to be ready
    slow = (
        f'[[tree.children]]\nid = "slow"\ncommand = ["sleep", "1000"]\n'
        f'ready = {{ command = ["sh", "-c", "[ -e {once} ] && sleep 20; touch {once}"], timeout = 60 }}\n'
    )
    writer = '[[tree.children]]\nid = "writer"'
    d = Daemon(tmp_path, toml(pg, "a", schema).replace(writer, slow + writer, 1))
    try:
        d.wait_ready()
        pid = wait_until(lambda: running(d), timeout=60, what="the singleton running")
        restart = subprocess.Popen([sys.executable, "-m", "mcp_supervisor.cli", "ctl", "--admin", d.admin,
                                    "--token-file", str(d.token_file), "restart", "slow"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_until(lambda: d.node("slow")["state"] != "running", 10, "slow restarting: its supervisor is busy")
        cut = time.time()
        pg.kill()
        try:
            wait_until(lambda: not alive(pid), timeout=LEASE + 5, what="the singleton killed by the backstop")
            assert d.node("slow")["state"] != "running"  # the supervisor was still busy: it was the backstop
            killed = [
                e for e in d.log_events() if e.get("event") == "cluster: killed a singleton at its lease's deadline"
            ]
            assert killed and killed[0]["pid"] == pid
            # when the daemon killed it, by its own log (not when this test's polling noticed): before the lease
            # could expire, counted from the last renewal, which was sent before the cut
            at = datetime.datetime.fromisoformat(killed[0]["ts"].replace("Z", "+00:00")).timestamp()
            assert at - cut < LEASE, at - cut
        finally:
            pg.start()
            restart.wait(60)
    finally:
        d.stop()


def lease_row(d: Daemon) -> dict[str, Any]:
    """The writer's lease as ``d`` last read it, once it was ever taken (before, the view lists the singleton with
    token 0; it shows the lease from the heartbeat after the lease was first taken)."""

    def taken() -> dict[str, Any] | None:
        return next((s for s in d.request("GET", "/cluster")[1]["singletons"] if s["path"] == "writer"
                     and s["token"] > 0), None)  # fmt: skip

    row: dict[str, Any] = wait_until(taken, what="the writer's lease in the node's view")
    return row


def test_a_move_is_used_up_once_its_node_holds_the_singleton(fleet: list[Daemon], pg: PgServer) -> None:
    first = the_holder(fleet)
    target = next(d for d in fleet if d is not first)
    first.request("POST", f"/cluster/move?path=writer&node={NAMES[fleet.index(target)]}")
    wait_until(lambda: holders(fleet) == [target], timeout=30, what="the move")
    wait_until(lambda: lease_row(target)["wanted"] is None, timeout=10, what="the wish used up")
    assert target.stop() == 0  # a clean stop: the lease released, the node's name freed
    stopped = time.monotonic()
    others = [d for d in fleet if d is not target]
    wait_until(lambda: holders(others), timeout=LEASE * 2, what="another node taking over")
    assert time.monotonic() - stopped < LEASE, "a clean stop waited for its node row to expire"
    holder = holders(others)[0]
    target.relaunch()
    target.wait_ready()
    began = holder.request("GET", "/cluster")[1]["read_at"]

    def two_leases_later() -> bool:  # on every look: the restarted node does not pull it back
        assert holders(fleet) == [holder]
        return bool(holder.request("GET", "/cluster")[1]["read_at"] >= began + 2 * LEASE)

    wait_until(two_leases_later, timeout=LEASE * 6, what="two leases after the restart")


def test_a_move_to_a_node_that_cannot_start_it_is_cancelled(pg: PgServer, tmp_path: Path) -> None:
    schema = f"cancel_{os.getpid()}_{int(time.monotonic() * 1000) % 10**6}"
    broken = toml(pg, "x", schema).replace(
        "shutdown = 0.5\n", 'shutdown = 0.5\nready = { command = ["false"], timeout = 1 }\n'
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "x").mkdir()
    a, x = Daemon(tmp_path / "a", toml(pg, "a", schema)), Daemon(tmp_path / "x", broken)
    try:
        a.wait_ready()
        x.wait_ready()
        wait_until(lambda: running(a), timeout=60, what="a running the singleton")
        a.request("POST", "/cluster/move?path=writer&node=x")
        wait_until(lambda: any(e.get("event", "").startswith("cluster: a move here was cancelled") for e in x.log_events()),
                   timeout=30, what="the move cancelled where it failed")  # fmt: skip
        wait_until(lambda: running(a) and lease_row(a)["wanted"] is None, timeout=30, what="the singleton back on a")
    finally:
        a.stop()
        x.stop()


def test_a_move_to_a_node_that_never_takes_it_is_void_after_its_bound(pg: PgServer, tmp_path: Path) -> None:
    schema = f"void_{os.getpid()}_{int(time.monotonic() * 1000) % 10**6}"
    full = toml(pg, "a", schema)
    without = toml(pg, "y", schema).split('[[tree.children]]\nid = "writer"')[0]  # y has no such singleton
    (tmp_path / "a").mkdir()
    (tmp_path / "y").mkdir()
    a, y = Daemon(tmp_path / "a", full), Daemon(tmp_path / "y", without)
    try:
        a.wait_ready()
        y.wait_ready()
        wait_until(lambda: running(a), timeout=60, what="a running the singleton")
        a.request("POST", "/cluster/move?path=writer&node=y")
        wait_until(lambda: not running(a), timeout=10, what="a handing it over")
        asked = time.monotonic()
        row = wait_until(lambda: (r := lease_row(a))["wanted"] == "y" and r, timeout=10, what="the pending move")
        assert row["wanted_age"] is not None
        wait_until(lambda: running(a), timeout=5 * LEASE + 10, what="the void move let a take it back")
        assert time.monotonic() - asked >= 5 * LEASE - LEASE  # it waited for the bound, not less
        assert lease_row(a)["wanted"] is None
    finally:
        a.stop()
        y.stop()


# -- network faults: each node's fleet traffic through its own fault proxy -----------------------------------------
@pytest.fixture
def cut_fleet(pg: PgServer, tmp_path: Path) -> Iterator[tuple[list[Daemon], list[FaultProxy]]]:
    with faulty_fleet(pg, tmp_path) as both:
        yield both


@contextlib.contextmanager
def faulty_fleet(
    pg: PgServer, tmp_path: Path, lease: float = LEASE, heartbeat: float = HEARTBEAT
) -> Iterator[tuple[list[Daemon], list[FaultProxy]]]:
    schema = f"net_{os.getpid()}_{int(time.monotonic() * 1000) % 10**6}"
    query(pg, "DROP TABLE IF EXISTS fenced, fenced_log")
    proxies = [FaultProxy(pg.port) for _ in NAMES]
    nodes: list[Daemon] = []
    try:
        for name, proxy in zip(NAMES, proxies, strict=True):
            (tmp_path / name).mkdir()
            nodes.append(Daemon(tmp_path / name, toml(pg, name, schema, via=proxy.port, lease=lease,
                                                      heartbeat=heartbeat)))  # fmt: skip
        for d in nodes:
            d.wait_ready()
        yield nodes, proxies
    finally:
        for p in proxies:
            p.heal()
        for d in nodes:
            d.stop()
        for p in proxies:
            p.close()


def lease_expiry(pg: PgServer, d: Daemon) -> float:
    """When the writer's lease expires, by the database (epoch seconds): as its holder last renewed it."""
    schema = d.config.read_text().split('schema = "')[1].split('"')[0]
    rows = query(pg, f"SELECT extract(epoch FROM expires_at)::float8 AS e FROM {schema}.leases WHERE path = 'writer'")
    return float(rows[0]["e"])


def handover(pg: PgServer, old_token: int) -> tuple[float, float]:
    """(the old token's last write attempt, the next token's first), epoch seconds, from the fenced log."""
    rows = fenced_log(pg)
    last_old = max(r["at"] for r in rows if r["token"] == old_token)
    first_new = min(r["at"] for r in rows if r["token"] > old_token)
    return last_old, first_new


def record(scenario: str, **figures: Any) -> None:
    line = {"scenario": scenario, **{k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}}
    print(f"fleet fault: {line}")
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "fleet-faults.json").open("a") as f:
        f.write(json.dumps(line) + "\n")


def token_of(d: Daemon) -> int:
    return int(lease_row(d)["token"])


def test_a_holder_cut_off_from_the_database_stops_its_singleton_before_another_takes_over(
    cut_fleet: tuple[list[Daemon], list[FaultProxy]], pg: PgServer
) -> None:
    """A blackhole (no RST, statements hang) between the holder and the database, the holder alive and busy: it
    stops its singleton by its own deadline, before the lease can expire; another node takes over afterwards; the
    two never overlap — not even in write attempts."""
    nodes, proxies = cut_fleet
    holder = the_holder(nodes)
    pid, token = running(holder), wait_until(lambda: token_of(holder), what="the lease's token")
    wait_until(lambda: any(r["token"] == token for r in fenced_log(pg)), what="the holder's writes")
    cut = time.time()
    proxies[nodes.index(holder)].blackhole()
    expiry = lease_expiry(pg, holder)  # the last renewal that reached the database
    wait_until(lambda: running(holder) is None, timeout=LEASE + 5, what="the cut holder to stop its singleton")
    stopped = time.time()
    others = [d for d in nodes if d is not holder]
    new = wait_until(lambda: (h := holders(others)) and h[0], timeout=LEASE * 4, what="another node taking over")
    wait_until(lambda: any(r["token"] > token for r in fenced_log(pg)), what="the new holder's writes")
    last_old, first_new = handover(pg, token)
    assert last_old < expiry <= first_new, (last_old, expiry, first_new)  # stopped before the lease could expire
    assert pid is not None and not alive(pid)
    assert len(holders(nodes)) == 1
    view = wait_until(lambda: (v := holder.request("GET", "/cluster")[1])["connected"] is False and v,
                      timeout=LEASE * 2, what="the cut node to say the database does not answer")  # fmt: skip
    assert view["error"]
    proxies[nodes.index(holder)].heal()
    wait_until(lambda: holder.request("GET", "/cluster")[1]["connected"], timeout=LEASE * 4, what="the node back")
    assert holders(nodes) == [new]
    accepted_tokens_never_go_back(pg)
    record("holder cut off (blackhole)", cut_to_local_stop_s=stopped - cut, last_write_before_expiry_s=expiry - last_old,
           outage_s=first_new - last_old, cut_to_takeover_s=first_new - cut, lease_s=LEASE, overlaps=0)  # fmt: skip


def test_a_half_open_connection_that_never_answers_is_replaced_without_two_holders(
    cut_fleet: tuple[list[Daemon], list[FaultProxy]], pg: PgServer
) -> None:
    """The holder's open connection goes silent (new ones work): its statement times out, the node reconnects; the
    singleton may be lost for a lease, never run twice, and runs again within the failover bound."""
    nodes, proxies = cut_fleet
    holder = the_holder(nodes)
    token = wait_until(lambda: token_of(holder), what="the lease's token")
    wait_until(lambda: any(r["token"] == token for r in fenced_log(pg)), what="the holder's writes")
    proxy = proxies[nodes.index(holder)]
    before = proxy.connections
    began = time.time()
    proxy.half_open()
    wait_until(lambda: proxy.connections > before, timeout=LEASE * 3, what="the holder to open a new connection")
    reconnected = time.time() - began

    def settled() -> bool:  # exactly one holder, writing, on every look at least a lease after the fault
        h = holders(nodes)
        assert len(h) <= 1
        return time.time() > began + 2 * LEASE and len(h) == 1

    wait_until(settled, timeout=LEASE * 6, what="one holder again")
    rows = accepted_tokens_never_go_back(pg)
    after = [r["at"] for r in rows if r["at"] > began and r["accepted"]]
    gaps = [b - a for a, b in itertools.pairwise([began, *after])]
    outage = max(gaps, default=0.0)
    assert outage < LEASE + 2 * HEARTBEAT + 5.0, outage
    kept = wait_until(lambda: token_of(holder), what="the token") == token
    record("half-open connection", silent_to_new_connection_s=reconnected, outage_s=outage,
           holder_kept_its_lease=kept, lease_s=LEASE, overlaps=0)  # fmt: skip


def test_the_database_reachable_from_one_node_only_moves_the_singleton_there(
    cut_fleet: tuple[list[Daemon], list[FaultProxy]], pg: PgServer
) -> None:
    nodes, proxies = cut_fleet
    holder = the_holder(nodes)
    token = wait_until(lambda: token_of(holder), what="the lease's token")
    wait_until(lambda: any(r["token"] == token for r in fenced_log(pg)), what="the holder's writes")
    reachable = next(d for d in nodes if d is not holder)
    cut = time.time()
    for d, p in zip(nodes, proxies, strict=True):
        if d is not reachable:
            p.blackhole()
    deadline = time.monotonic() + LEASE * 6
    while running(reachable) is None:  # on every look: never two
        assert len(holders(nodes)) <= 1, "two nodes ran the singleton"
        assert time.monotonic() < deadline, "the reachable node did not take the singleton"
    assert holders(nodes) == [reachable]
    wait_until(lambda: any(r["token"] > token for r in fenced_log(pg)), what="the new holder's writes")
    last_old, first_new = handover(pg, token)
    assert last_old < first_new
    accepted_tokens_never_go_back(pg)
    record("database reachable from one node", cut_to_takeover_s=first_new - cut, outage_s=first_new - last_old,
           lease_s=LEASE, overlaps=0)  # fmt: skip


SLOW_LEASE = 20.0


@pytest.mark.timeout(240)
def test_a_link_with_two_seconds_of_latency_renews_late_but_in_time(pg: PgServer, tmp_path: Path) -> None:
    """2 s on every chunk in each direction (a round trip costs 4 s) on every node's link: renewals arrive late but
    within the lease — the same holder, the same token and the same process throughout, no flapping, no overlap."""
    with faulty_fleet(pg, tmp_path, lease=SLOW_LEASE, heartbeat=1.0) as (nodes, proxies):
        holder = the_holder(nodes)
        pid, token = running(holder), wait_until(lambda: token_of(holder), what="the lease's token")
        for p in proxies:
            p.delay(2.0)
        began = time.monotonic()
        expiries: list[float] = []

        def watched() -> bool:  # on every look: the same process, and nobody else
            assert holders(nodes) == [holder] and running(holder) == pid, f"moved or restarted: {expiries}, {began}"
            e = lease_expiry(pg, holder)
            if not expiries or e != expiries[-1]:
                expiries.append(e)
            return time.monotonic() - began > 2 * SLOW_LEASE and len(expiries) >= 4

        wait_until(watched, timeout=SLOW_LEASE * 4, what="two leases of renewals over the slow link")
        for p in proxies:
            p.heal()
        assert token_of(holder) == token
        renewal_gaps = [b - a for a, b in itertools.pairwise(expiries)]
        assert max(renewal_gaps) < SLOW_LEASE - 1.0, renewal_gaps
    accepted_tokens_never_go_back(pg)
    record("2 s latency each way", renewals=len(expiries) - 1, longest_between_renewals_s=max(renewal_gaps),
           lease_s=SLOW_LEASE, holder_changes=0, overlaps=0)  # fmt: skip
