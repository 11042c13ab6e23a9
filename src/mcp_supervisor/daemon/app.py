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
import dataclasses
import faulthandler
import signal
import socket
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..admin import AdminServer, Health, find_health
from ..admin.journal import Journal, ReloadResult
from ..admin.seams import Change, Outcome, Record, ReloadReport, RollReport, ScaleReport, audit_fields
from ..config import Config, ConfigError, load_config
from ..config.load import MIN_TOKEN
from ..config.settings import read_small_file
from ..core import (
    ChildExited,
    ChildStarted,
    FailedToStartChild,
    State,
    Tree,
    describe,
    splice,
)
from ..core.cgroups import Cgroups
from ..telemetry.events import log_events
from ..telemetry.logs import REDACTOR, LineWriter, close_writers, configure, get_logger, set_tap
from ..telemetry.metrics import METRICS_REGISTRY, DaemonMetrics, FleetSample
from . import discovery, exits
from .alerts import Alerts
from .builtins import BUILTIN_WORKERS
from .listeners import HeldSockets, from_systemd
from .reload import apply_difference, log_limits
from .replicas import roll, scale
from .subtrees import Subtrees
from .systemd import Notifier

if TYPE_CHECKING:
    from .cluster import ClusterAgent


def read_token(path: str | None) -> str | None:
    """The admin token (the load checked the file; it may have changed since, so it is checked again)."""
    if path is None:
        return None
    try:
        token = read_small_file(path).strip()
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(path, "daemon.admin_token_file", f"cannot read the token file: {reason}") from None
    if len(token) < MIN_TOKEN:
        raise ConfigError(path, "daemon.admin_token_file", f"the token must be at least {MIN_TOKEN} characters")
    return token


def load(config_path: str | None, current: str | None = None) -> tuple[Config, str | None]:
    """The guard of every entrance (run, SIGHUP, POST /reload): any failure is a ConfigError, never a crash."""
    try:
        cfg = load_config(config_path, workers=BUILTIN_WORKERS, host_checks=True)
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
        self.subtrees = Subtrees(self.tree, lambda: self.config.isolated)  # isolation = "process": their channels
        self.forks = self.tree.use_fork_server()  # ... and their processes forked from a pre-imported template
        self.fleet: ClusterAgent | None = None
        if cfg.cluster is not None:  # fleet mode needs asyncpg (the [postgres] extra): imported only then
            from .cluster import ClusterAgent

            self.fleet = ClusterAgent(cfg.cluster, self.tree, cfg.singletons, admin=str(cfg.daemon.admin), log=self.log,
                                      summary=self._node_summary)  # fmt: skip
        node = cfg.cluster.node if cfg.cluster is not None else socket.gethostname()
        self._alerts = Alerts(self.tree.bus, node, REDACTOR.redact, self.log)
        spliced = lambda: splice(self.tree.status(), self.subtrees.status)  # noqa: E731 - isolated children too
        self.prom = DaemonMetrics(spliced, self._cluster_metrics if self.fleet else None, self._drops,
                                  self._alerts.samples, lambda: self.tree.loopwatch)  # fmt: skip
        self.tree.provide(METRICS_REGISTRY, self.prom.registry)  # one registry for every metric
        self.journal = Journal(redact=REDACTOR.redact_value, limits=log_limits(cfg))
        self.token = token
        self.draining = False
        self.held = held if held is not None else HeldSockets()
        self.admin = AdminServer(
            self, self, cfg.daemon.admin, allow_remote=cfg.daemon.allow_remote_admin, redact=REDACTOR.redact_value
        )
        self._secrets = cfg.secrets | ({token} if token else frozenset())
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state_file: Path | None = None
        self._started_at = time.time()

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
            await self._alerts.configure(cfg.daemon.alerts)
            self._alerts.start()  # before the tree: a first start that fails is told too
            stack.push_async_callback(self._alerts.stop)  # after the tree stopped: its last words are sent
            self.log.info("starting", config=cfg.file, admin=str(cfg.daemon.admin), children=len(cfg.tree.children))
            self.notifier.status("starting the tree")
            stack.callback(self.held.close)  # after the tree stopped: no child needs them any more
            try:
                self._hold_sockets(cfg)
            except OSError as e:
                self.log.error("cannot hold a socket", error=describe(e))
                self.notifier.send(STATUS=f"failed to start: {describe(e)}", ERRNO=1)
                return exits.FAILED
            await self._prepare_forks(cfg)
            try:
                await tree.start()
            except FailedToStartChild as e:
                self.log.error("the tree failed to start", error=str(e))
                self.notifier.send(STATUS=f"failed to start: {e}", ERRNO=1)
                await tree.stop()
                return exits.FAILED
            tree.watch_loop()  # who blocks the event loop is named (LoopBlocked), not just suffered
            stack.push_async_callback(self.admin.stop)
            stack.push_async_callback(self._stop_tree)  # unwound first, while the admin port answers "draining"
            try:
                await self.admin.start()
            except OSError as e:
                self.log.error("cannot bind the admin port", admin=str(cfg.daemon.admin), error=describe(e))
                return exits.FAILED
            self._write_state()  # `ctl` in another terminal finds this daemon (and the token file it reads)
            stack.callback(discovery.remove, self._state_file)
            self._spawn(self._watchdog())
            self._spawn(self._status_updates())
            if self.fleet is not None:
                agent = asyncio.get_running_loop().create_task(self.fleet.run())
                stack.push_async_callback(_cancel, agent)  # unwound before the tree: singletons handed over first
            self.notifier.ready(self._summary("running"))
            self.log.info("ready", admin=str(cfg.daemon.admin), mutations="on" if self.token else "off")
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
            return exits.OK
        reason = tree_wait.result()
        if reason.detail == "auto_shutdown":
            self.notifier.stopping("the root supervisor shut down (auto_shutdown)")
            return exits.OK
        self.log.error("the root supervisor gave up", reason=reason.kind, detail=reason.detail)
        self.notifier.stopping(f"root supervisor gave up: {reason}")
        if self.config.daemon.exit_code == "child":
            code, path = self._culprit()
            self.log.info("exiting with the status of the child that made the root give up", child=path, code=code)
            return code
        return exits.FAILED

    def _culprit(self) -> tuple[int, str]:
        """The exit status of the last child that ended abnormally (the one whose restarts exceeded the root's
        intensity), in a shell's terms: its exit code, or 128 + the signal that killed it; 1 for a worker."""
        self.journal.catch_up()
        _, entries = self.journal.entries_after(0)
        for entry in reversed(entries):
            ev = entry.event
            if isinstance(ev, ChildExited) and ev.reason.kind == "abnormal":
                detail = ev.reason.detail
                if detail.startswith("exit code "):
                    return int(detail.removeprefix("exit code ").split()[0]) or 1, ev.path
                if detail.startswith("killed by SIG"):
                    with contextlib.suppress(KeyError):
                        return 128 + signal.Signals[detail.removeprefix("killed by ").split()[0]], ev.path
                return exits.FAILED, ev.path
        return exits.FAILED, ""

    async def _stop_tree(self) -> None:
        self.draining = True
        began = time.monotonic()
        report = await self.tree.stop()
        await self.subtrees.close()
        self.log.info("stopped", took_s=round(time.monotonic() - began, 3), unstopped=list(report.unstopped))

    def _on_stop_signal(self, sig: int) -> None:
        self.log.info("stop requested", signal=signal.Signals(sig).name)
        self.draining = True
        self._stop.set()

    def _write_state(self) -> None:
        cfg = self.config
        info = discovery.describe_for(cfg.file, str(cfg.daemon.admin), cfg.daemon.admin_token_file, __version__)
        self._state_file = discovery.write(dataclasses.replace(info, started_at=self._started_at))

    # -- what the admin port sees (admin.seams.Views) and may ask for (admin.seams.Controls) ------------------------
    def health(self) -> Health | None:
        return find_health(self.tree)

    def metrics(self) -> tuple[bytes, str]:
        return self.prom.render()

    def _drops(self) -> tuple[int, int]:
        return self.tree.bus.statistics().dropped, self.writer.dropped if self.writer is not None else 0

    def cluster(self) -> Record | None:
        return self.fleet.view if self.fleet is not None else None

    def alerts(self) -> dict[str, Any] | None:
        return self._alerts.as_dict()

    def isolated(self) -> Mapping[str, dict[str, Any]]:
        """What each isolated subtree's process last told of its status (over its control channel)."""
        return self.subtrees.views()

    async def inside(self, path: str, action: str, **args: Any) -> dict[str, Any] | None:
        return await self.subtrees.act(path, action, **args)

    async def test_alert(self, name: str) -> tuple[bool, str]:
        return await self._alerts.test(name)

    def audited(self, action: str, outcome: Outcome, status: int, peer: str, detail: str = "") -> None:
        self.log.info(
            "admin mutation", action=action, outcome=str(outcome), status=status, peer=peer, **audit_fields(detail)
        )
        self.prom.admin_requests.labels(action.partition(" ")[0], str(outcome)).inc()

    async def move(self, path: str, node: str) -> None:
        if self.fleet is None:
            raise LookupError("this node is not in a cluster (no [cluster] table)")
        await self.fleet.move(path, node)

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
            self.prom.watchdog_pings.inc()
            await asyncio.sleep(interval)

    def _node_summary(self) -> dict[str, int]:
        """How many children the tree has and how many run (STATUS=, and this node's row in fleet mode)."""
        states = [child.state for child in self.tree.walk()]
        return {"children": len(states), "running": sum(1 for st in states if st is State.RUNNING)}

    def _cluster_metrics(self) -> FleetSample | None:
        return self.fleet.view.sample(self.fleet.renew_failures) if self.fleet is not None else None

    def _hold_sockets(self, cfg: Config) -> None:
        for warning in self.held.hold(cfg.daemon.sockets):
            self.log.warning("config warning", detail=warning)
        for name, sock in self.held.sockets.items():
            self.tree.hold_socket(name, sock)

    # -- replicas ------------------------------------------------------------------------------------------
    async def scale(self, path: str, instances: int) -> ScaleReport:
        """``instances`` of the replicated child at ``path`` (until the next reload applies the file's)."""
        replicas = self.config.replicas.get(path)
        if replicas is None:
            raise LookupError(f"{path!r} is not a child with instances (set instances = N in its table)")
        async with self._reload_lock:  # not while a reload reshapes the tree
            return await scale(self.tree, replicas, instances)

    async def roll(self, path: str) -> RollReport:
        async with self._reload_lock:
            return await roll(self.tree, path)

    # -- reload --------------------------------------------------------------------------------------------
    def validate(self) -> str | None:
        """The config file's error as a reload would find it (nothing is applied), or None."""
        try:
            load(self.config_path, self.config.file)
        except ConfigError as e:
            return str(e)
        return None

    async def reload(self) -> ReloadReport:
        """Re-read the config; on error keep everything untouched; else apply only the difference."""
        async with self._reload_lock:
            self.notifier.reloading()
            self.log.info("reloading", config=self.config.file)
            try:
                new, token = load(self.config_path, self.config.file)
            except ConfigError as e:
                return self._reload_failed("reload failed; keeping the running configuration", str(e))
            old = self.config
            if new.daemon.admin != old.daemon.admin:
                self.log.warning("daemon.admin changed: it takes effect at the next start", admin=str(new.daemon.admin))
            current = new.secrets | ({token} if token else frozenset())
            # the new children may speak as soon as they start: their secrets are masked before any starts
            REDACTOR.update(self._secrets | current)
            try:
                self._hold_sockets(new)  # new names are bound before a child that lists them starts
                await self._prepare_forks(new)  # an isolated subtree (re)started from now on runs the new config
                keep = self.fleet.held() if self.fleet is not None else []
                changes = await apply_difference(self.tree, old, new, keep)
                # a kept isolated subtree applies its own difference (a restarted one read the new file already)
                changes += await self.subtrees.reload([p for p in new.isolated if p in old.isolated])
            except Exception as e:  # noqa: BLE001 - report, keep running
                await self._prepare_forks(old)
                return self._reload_failed("reload failed while applying", describe(e))
            self.config = new
            if self.fleet is not None:
                if new.cluster != old.cluster:
                    self.log.warning("the [cluster] table changed: it takes effect at the next start")
                self.fleet.update(new.singletons)
            elif new.cluster is not None:
                self.log.warning("a [cluster] table was added: fleet mode starts at the next start")
            self.token = token
            if new.daemon.admin_token_file != old.daemon.admin_token_file and self._state_file is not None:
                self._write_state()
            # old children may still speak while they stop: the previous secrets stay masked until the next reload
            self._secrets = current
            self.prom.reload_result(True)
            self.journal.resize(log_limits(new))
            await self._alerts.configure(new.daemon.alerts)
            self._emit(ReloadResult(path="", ok=True, changes=tuple(changes)))
            report = ReloadReport(ok=True, changes=tuple(Change(p, c) for p, c in changes))
            self.log.info("reloaded", changes=report.as_dict()["changes"])
            self.notifier.ready(self._summary(f"reloaded ({len(changes)} changes)"))
            return report

    async def _prepare_forks(self, cfg: Config) -> None:
        """The fork server imports what an isolated subtree runs and parses this config, once: a restarted subtree is
        forked with both (else it is exec'd: its command)."""
        if cfg.isolated:
            with contextlib.suppress(OSError):
                await self.forks.prepare("mcp_supervisor.daemon.isolated", [cfg.file])

    def _reload_failed(self, message: str, error: str) -> ReloadReport:
        self.prom.reload_result(False)
        self.log.error(message, error=error)
        self.notifier.ready(f"reload failed, running the previous config: {error}")
        self._emit(ReloadResult(path="", ok=False, error=error))
        return ReloadReport(ok=False, error=error)


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


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
            notifier.send(STATUS=f"invalid config: {e}", ERRNO=exits.CONFIG)
            return exits.CONFIG
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
