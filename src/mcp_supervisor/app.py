"""The composition root: config → logging → tree → admin port → signals and systemd, until stopped.

``run_daemon`` validates the config before anything starts, then builds a :class:`Daemon` in one step from it;
``Daemon.run`` starts the parts and unwinds them through one ``AsyncExitStack`` in a fixed order: the tree first
(children in reverse order, while the admin port still answers ``/readyz`` with 503), then the admin port, then the
background tasks.

Exit codes: 0 clean stop; 78 (EX_CONFIG) invalid config, before anything starts; 1 the root supervisor gave up
or failed to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import signal
import time
from collections.abc import Coroutine
from typing import Any

from .admin import AdminServer, AdminState, find_health
from .cluster import ClusterAgent
from .config import Config, ConfigError, load_config
from .config.model import INSTANCE_SEP
from .core import (
    Cgroups,
    ChildExited,
    ChildSpec,
    ChildStarted,
    FailedToStartChild,
    State,
    SupervisorSpec,
    Tree,
    describe,
)
from .journal import DEFAULT_LOG_BYTES, DEFAULT_LOG_LINES, Journal, Limits, ReloadResult
from .listeners import HeldSockets, from_systemd
from .replicas import roll, scale
from .settings import read_small_file
from .systemd import Notifier
from .telemetry.events import log_events
from .telemetry.logs import REDACTOR, LineWriter, close_writers, configure, get_logger, set_tap
from .telemetry.metrics import METRICS_REGISTRY, DaemonMetrics

EXIT_OK = 0
EXIT_GAVE_UP = 1
EXIT_CONFIG = 78

BUILTIN_WORKERS: dict[str, str] = {
    "postgres": "mcp_supervisor.services.postgres:factory",
    "redis": "mcp_supervisor.services.redis:factory",
    "s3": "mcp_supervisor.services.s3:factory",
    "vault": "mcp_supervisor.services.vault:factory",
    "health": "mcp_supervisor.health.monitor:factory",
    "telemetry": "mcp_supervisor.telemetry.sink:factory",
}
"""The worker names a config may use without a module path (``worker = "postgres"``), imported only when used."""


def read_token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        token = read_small_file(path).strip()
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(path, "daemon.admin_token_file", f"cannot read the token file: {reason}") from None
    if len(token) < 16:
        raise ConfigError(path, "daemon.admin_token_file", "the token must be at least 16 characters")
    return token


def load(config_path: str | None, current: str | None = None) -> tuple[Config, str | None]:
    """The guard of every entrance (run, SIGHUP, POST /reload): any failure is a ConfigError, never a crash."""
    try:
        cfg = load_config(config_path, workers=BUILTIN_WORKERS)
        return cfg, read_token(cfg.daemon.admin_token_file)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - unforeseen: still a config error, the running tree untouched
        raise ConfigError(current or config_path or "config", "", f"cannot be loaded ({describe(e)})") from None


class Daemon:
    """One running daemon, built whole from a valid config."""

    def __init__(  # noqa: PLR0917
        self,
        config_path: str | None,
        cfg: Config,
        token: str | None,
        notifier: Notifier,
        writer: LineWriter | None,
        held: HeldSockets | None = None,
    ) -> None:
        self.config_path = config_path
        self.config = cfg
        self.notifier = notifier
        self.writer = writer
        self.log: Any = get_logger()
        self.tree = Tree(cfg.tree, subreaper=True)
        self.tree.use_cgroups(Cgroups.detect())  # a delegated cgroup v2 subtree when systemd gave us one
        self.cluster = (
            ClusterAgent(cfg.cluster, self.tree, cfg.singletons, admin=cfg.daemon.admin, log=self.log,
                         summary=self._node_summary)
            if cfg.cluster is not None
            else None
        )  # fmt: skip
        self.metrics = DaemonMetrics(self.tree.status, self._cluster_metrics if self.cluster else None)
        self.tree.provide(METRICS_REGISTRY, self.metrics.registry)  # one registry for every metric
        self.journal = Journal(redact=REDACTOR.redact_value, limits=log_limits(cfg))
        self.state = AdminState(
            tree=self.tree,
            find_health=lambda: find_health(self.tree),
            log=self.log,
            metrics=self._render_metrics,
            reload=self.reload,
            token=token,
            on_mutation=lambda outcome: self.metrics.admin_requests.labels(outcome.split(" ")[0]).inc(),
            redact=REDACTOR.redact_value,
            journal=self.journal,
            scale=self.scale,
            roll=self.roll,
            cluster=self._cluster_view if self.cluster is not None else None,
            move=self.cluster.move if self.cluster is not None else None,
        )
        self.held = held if held is not None else HeldSockets()
        self.admin = AdminServer(self.state, cfg.daemon.admin, cfg.daemon.allow_remote_admin)
        self._secrets = cfg.secrets | ({token} if token else frozenset())
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _emit(self, event: ReloadResult) -> None:
        if self.tree.bus.active:
            self.tree.bus.emit(event)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- life --------------------------------------------------------------------------------------------------
    async def run(self) -> int:
        cfg, tree = self.config, self.tree
        for warning in cfg.warnings:
            self.log.warning("config warning", detail=warning)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._cancel_tasks)  # unwound last
            stack.enter_context(self._signals())  # SIGHUP before READY=1 (systemd/systemd#39692)
            self._spawn(log_events(tree.bus.subscribe(maxlen=100_000), self.log))
            self._spawn(self.journal.pump(tree.bus))
            set_tap(self.journal.log_line)  # children's own log lines into their output rings
            stack.callback(set_tap, None)
            self.log.info("starting", config=cfg.file, admin=cfg.daemon.admin, children=len(cfg.tree.children))
            self.notifier.status("starting the tree")
            stack.callback(self.held.close)  # after the tree stopped: no child needs them any more
            try:
                self._hold_sockets(cfg)
            except OSError as e:
                self.log.error("cannot hold a socket", error=describe(e))
                self.notifier.send(STATUS=f"failed to start: {describe(e)}", ERRNO=1)
                return EXIT_GAVE_UP
            try:
                await tree.start()
            except FailedToStartChild as e:
                self.log.error("the tree failed to start", error=str(e))
                self.notifier.send(STATUS=f"failed to start: {e}", ERRNO=1)
                await tree.stop()
                return EXIT_GAVE_UP
            stack.push_async_callback(self.admin.stop)
            stack.push_async_callback(self._stop_tree)  # unwound first, while the admin port answers "draining"
            try:
                await self.admin.start()
            except OSError as e:
                self.log.error("cannot bind the admin port", admin=cfg.daemon.admin, error=describe(e))
                return EXIT_GAVE_UP
            self._spawn(self._watchdog())
            self._spawn(self._status_updates())
            if self.cluster is not None:
                agent = asyncio.get_running_loop().create_task(self.cluster.run())
                stack.push_async_callback(_cancel, agent)  # unwound before the tree: singletons handed over first
            self.notifier.ready(self._summary("running"))
            self.log.info("ready", admin=cfg.daemon.admin, mutations="on" if self.state.token else "off")
            return await self._until_stopped()

    @contextlib.contextmanager
    def _signals(self) -> Any:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _until_stopped(self) -> int:
        """Wait for SIGTERM/SIGINT or the root supervisor's own exit; returns the exit code."""
        stop_wait = asyncio.ensure_future(self._stop.wait())
        tree_wait = asyncio.ensure_future(self.tree.wait())
        await asyncio.wait({stop_wait, tree_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if not tree_wait.done():
            tree_wait.cancel()
            self.notifier.stopping("stopping: stopping children in reverse order")
            return EXIT_OK
        reason = tree_wait.result()
        if reason.detail == "auto_shutdown":
            self.notifier.stopping("the root supervisor shut down (auto_shutdown)")
            return EXIT_OK
        self.log.error("the root supervisor gave up", reason=reason.kind, detail=reason.detail)
        self.notifier.stopping(f"root supervisor gave up: {reason}")
        return EXIT_GAVE_UP

    async def _stop_tree(self) -> None:
        self.state.draining = True
        began = time.monotonic()
        report = await self.tree.stop()
        self.log.info("stopped", took_s=round(time.monotonic() - began, 3), unstopped=list(report.unstopped))

    def _on_stop_signal(self, sig: int) -> None:
        self.log.info("stop requested", signal=signal.Signals(sig).name)
        self.state.draining = True
        self._stop.set()

    # -- what the admin port and systemd see ---------------------------------------------------------------
    def _render_metrics(self) -> tuple[bytes, str]:
        self.metrics.events_dropped.set(self.tree.bus.statistics().dropped)
        if self.writer is not None:
            self.metrics.log_lines_dropped.set(self.writer.dropped)
        return self.metrics.render()

    def _summary(self, prefix: str) -> str:
        counts = self._node_summary()
        return f"{prefix}: {counts['running']}/{counts['children']} children running"

    async def _status_updates(self) -> None:
        """STATUS= whenever a child starts or exits (at most every half second), for `systemctl status`."""
        sub = self.tree.bus.subscribe(maxlen=1000)
        last = ""
        try:
            async for ev in sub:
                if isinstance(ev, ChildStarted | ChildExited):
                    await asyncio.sleep(0.5)  # coalesce a burst (a group restart) into one update
                    while sub.get_nowait() is not None:
                        pass
                    status = self._summary("running")
                    if status != last:
                        self.notifier.status(status)
                        last = status
        finally:
            sub.close()

    async def _watchdog(self) -> None:
        """WATCHDOG=1 at half of WATCHDOG_USEC, from the event loop itself: a blocked loop stops the pings."""
        if not self.notifier.watchdog_usec:
            return
        interval = self.notifier.watchdog_usec / 2e6
        while True:
            self.notifier.send(WATCHDOG=1)
            self.metrics.watchdog_pings.inc()
            await asyncio.sleep(interval)

    def _node_summary(self) -> dict[str, int]:
        """How many children the tree has and how many run (STATUS=, and this node's row in fleet mode)."""
        states = [child.state for child in self.tree.rt.walk()]
        return {"children": len(states), "running": sum(1 for st in states if st is State.RUNNING)}

    def _cluster_view(self) -> dict[str, Any]:
        assert self.cluster is not None
        return self.cluster.view.as_dict()

    def _cluster_metrics(self) -> tuple[dict[str, Any], int] | None:
        return (self.cluster.view.as_dict(), self.cluster.renew_failures) if self.cluster is not None else None

    def _hold_sockets(self, cfg: Config) -> None:
        for warning in self.held.hold(cfg.daemon.sockets):
            self.log.warning("config warning", detail=warning)
        for name, sock in self.held.sockets.items():
            self.tree.hold_socket(name, sock)

    # -- replicas ------------------------------------------------------------------------------------------
    async def scale(self, path: str, count: int) -> dict[str, Any]:
        """``count`` instances of the replicated child at ``path`` (until the next reload applies the file's)."""
        replicas = self.config.replicas.get(path)
        if replicas is None:
            raise LookupError(f"{path!r} is not a child with instances (set instances = N in its table)")
        async with self._reload_lock:  # not while a reload reshapes the tree
            return await scale(self.tree, replicas, count)

    async def roll(self, path: str) -> dict[str, Any]:
        async with self._reload_lock:
            return (await roll(self.tree, path)).as_dict()

    # -- reload --------------------------------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        """Re-read the config; on error keep everything untouched; else apply only the difference."""
        async with self._reload_lock:
            self.notifier.reloading()
            self.log.info("reloading", config=self.config.file)
            try:
                new, token = load(self.config_path, self.config.file)
            except ConfigError as e:
                self.metrics.reload_result(False)
                self.log.error("reload failed; keeping the running configuration", error=str(e))
                self.notifier.ready(f"reload failed, running the previous config: {e}")
                self._emit(ReloadResult(path="", ok=False, error=str(e)))
                return {"ok": False, "error": str(e), "changes": []}
            old = self.config
            if new.daemon.admin != old.daemon.admin:
                self.log.warning("daemon.admin changed: it takes effect at the next start", admin=new.daemon.admin)
            current = new.secrets | ({token} if token else frozenset())
            # the new children may speak as soon as they start: their secrets are masked before any starts
            REDACTOR.update(self._secrets | current)
            try:
                self._hold_sockets(new)  # new names are bound before a child that lists them starts
                keep = self.cluster.held() if self.cluster is not None else []
                changes = await apply_difference(self.tree, old, new, keep)
            except Exception as e:  # noqa: BLE001 - report, keep running
                self.metrics.reload_result(False)
                self.log.error("reload failed while applying", error=describe(e))
                self.notifier.ready(f"reload failed: {describe(e)}")
                self._emit(ReloadResult(path="", ok=False, error=describe(e)))
                return {"ok": False, "error": describe(e), "changes": []}
            self.config = new
            if self.cluster is not None:
                if new.cluster != old.cluster:
                    self.log.warning("the [cluster] table changed: it takes effect at the next start")
                self.cluster.update(new.singletons)
            elif new.cluster is not None:
                self.log.warning("a [cluster] table was added: fleet mode starts at the next start")
            self.state.token = token
            # old children may still speak while they stop: the previous secrets stay masked until the next reload
            self._secrets = current
            self.metrics.reload_result(True)
            self.journal.resize(log_limits(new))
            self._emit(ReloadResult(path="", ok=True, changes=tuple(changes)))
            described = [{"path": p, "change": c} for p, c in changes]
            self.log.info("reloaded", changes=described)
            self.notifier.ready(self._summary(f"reloaded ({len(changes)} changes)"))
            return {"ok": True, "changes": described}


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def log_limits(cfg: Config) -> Limits:
    """Each child's output-ring bounds, from its ``log_lines`` / ``log_bytes``."""

    def limits(path: str) -> tuple[int, int]:
        entry = cfg.entries.get(path)
        return (entry.log_lines, entry.log_bytes) if entry is not None else (DEFAULT_LOG_LINES, DEFAULT_LOG_BYTES)

    return limits


async def apply_difference(
    tree: Tree, old: Config, new: Config, keep: list[str] | None = None
) -> list[tuple[str, str]]:
    """Walk the new tree; each supervisor reconciles its own children (started, stopped, restarted, untouched).

    ``keep``: paths of fleet singletons running here, which the file's tree does not list (the cluster agent
    starts and stops them): they stay as they are."""
    kept: dict[str, list[ChildSpec]] = {}
    for p in keep or []:
        with contextlib.suppress(LookupError):
            kept.setdefault(p.rpartition("/")[0], []).append(tree.get_childspec(p))
    changes: list[tuple[str, str]] = []

    async def walk(path: str, spec: SupervisorSpec) -> None:
        replace, rolling = set(), []
        for child in spec.children:
            cpath = f"{path}/{child.id}" if path else child.id
            before, after = old.entries.get(cpath), new.entries.get(cpath)
            if (
                before is not None
                and after is not None
                and (before.kind != after.kind or before.fingerprint != after.fingerprint)
            ):
                replicas = new.replicas.get(cpath.rpartition(INSTANCE_SEP)[0])
                if replicas is not None and replicas.rolling:
                    rolling.append(child.id)
                else:
                    replace.add(child.id)
        sup = tree.supervisor(path)
        specs = [*spec.children, *kept.get(path, [])]
        changes.extend(await sup.reconcile(specs, replace, spec.flags))
        for cid in rolling:  # one at a time, each new one ready before the next old one stops
            done = await sup.reconcile(specs, {cid})
            changes.extend(done)
            if any(change.startswith("failed") for _, change in done):
                break  # the roll stops here: the instances after it keep running as they were
        for child in spec.children:
            cpath = f"{path}/{child.id}" if path else child.id
            if isinstance(child, SupervisorSpec) and child.id not in replace and cpath in old.entries:
                with contextlib.suppress(LookupError):
                    await walk(cpath, child)

    await walk("", new.tree)
    tree.spec = new.tree
    return changes


def run_daemon(config_path: str | None) -> int:
    """Validate the config, set up logging, then run the daemon on uvloop when installed (asyncio otherwise)."""
    notifier = Notifier(redact=REDACTOR.redact)  # first: children must not inherit NOTIFY_SOCKET / WATCHDOG_*
    held = HeldSockets(from_systemd())  # systemd's sockets, if it activated us; LISTEN_* leave our environment
    try:
        try:
            cfg, token = load(config_path)
        except ConfigError as e:
            configure("info", "auto", stdlib=True, threaded=True)
            get_logger().error("invalid config", error=str(e))
            notifier.send(STATUS=f"invalid config: {e}", ERRNO=EXIT_CONFIG)
            return EXIT_CONFIG
        REDACTOR.update(cfg.secrets | ({token} if token else frozenset()))
        writer = configure(cfg.daemon.log_level, cfg.daemon.log_format, redactor=REDACTOR, stdlib=True, threaded=True)
        faulthandler.enable()
        try:
            import uvloop

            factory: Any = uvloop.new_event_loop
        except ImportError:
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_run(config_path, cfg, token, notifier, writer, held))
    finally:
        notifier.close()
        close_writers()  # the last lines (the stop report) reach stdout before we exit


async def _run(  # noqa: PLR0917
    config_path: str | None, cfg: Config, token: str | None, notifier: Notifier, writer: Any, held: HeldSockets
) -> int:
    return await Daemon(config_path, cfg, token, notifier, writer, held).run()
