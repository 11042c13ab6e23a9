"""The composition root: config → tree → admin port → signals and systemd, until stopped.

Exit codes: 0 clean stop; 78 (EX_CONFIG) invalid config, before anything starts; 1 the root supervisor gave up
or failed to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import signal
import time
from typing import Any

from .admin import AdminServer, AdminState
from .config import Config, ConfigError, load_config
from .core import FailedToStartChild, State, SupervisorSpec, Tree, describe
from .settings import read_small_file
from .systemd import Notifier
from .telemetry.events import log_events
from .telemetry.logs import REDACTOR, LineWriter, close_writers, configure, get_logger
from .telemetry.metrics import DaemonMetrics

EXIT_OK = 0
EXIT_GAVE_UP = 1
EXIT_CONFIG = 78


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


class Daemon:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self.notifier = Notifier(redact=REDACTOR.redact)  # first: children must not inherit NOTIFY_SOCKET etc.
        self.log: Any = get_logger()
        self.config: Config | None = None
        self.tree: Tree | None = None
        self.admin: AdminServer | None = None
        self.state: AdminState | None = None
        self.metrics = DaemonMetrics(lambda: self.tree.status() if self.tree is not None else None)
        self.writer: LineWriter | None = None
        self._stop = asyncio.Event()
        self._secrets: frozenset[str] | set[str] = frozenset()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def load(self) -> tuple[Config, str | None]:
        """The guard of every entrance (run, SIGHUP, POST /reload): any failure is a ConfigError, never a crash."""
        try:
            cfg = load_config(self.config_path)
            return cfg, read_token(cfg.daemon.admin_token_file)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - unforeseen: still a config error, the running tree untouched
            where = self.config.file if self.config is not None else (self.config_path or "config")
            raise ConfigError(where, "", f"cannot be loaded ({describe(e)})") from None

    async def run(self) -> int:
        try:
            cfg, token = self.load()
        except ConfigError as e:
            configure("info", "auto", stdlib=True, threaded=True)
            get_logger().error("invalid config", error=str(e))
            self.notifier.send(STATUS=f"invalid config: {e}", ERRNO=EXIT_CONFIG)
            return EXIT_CONFIG
        self._secrets = cfg.secrets | ({token} if token else set())
        REDACTOR.update(self._secrets)
        self.writer = configure(
            cfg.daemon.log_level, cfg.daemon.log_format, redactor=REDACTOR, stdlib=True, threaded=True
        )
        faulthandler.enable()
        self.log = get_logger()
        self.config = cfg
        for warning in cfg.warnings:
            self.log.warning("config warning", detail=warning)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)  # before READY=1 (systemd/systemd#39692)

        tree = Tree(cfg.tree, subreaper=True)
        tree.rt.extensions["metrics_registry"] = self.metrics.registry  # one registry for every metric
        self.tree = tree
        sub = tree.bus.subscribe(maxlen=100_000)
        self._spawn(log_events(sub, self.log))
        self.log.info("starting", config=cfg.file, admin=cfg.daemon.admin, children=len(cfg.tree.children))
        self.notifier.status("starting the tree")
        try:
            await tree.start()
        except FailedToStartChild as e:
            self.log.error("the tree failed to start", error=str(e))
            self.notifier.send(STATUS=f"failed to start: {e}", ERRNO=1)
            await tree.stop()
            return EXIT_GAVE_UP
        self.state = AdminState(
            tree=tree,
            find_health=lambda: find_health(tree),
            log=self.log,
            metrics=self._render_metrics,
            reload=self.reload,
            token=token,
            on_mutation=lambda outcome: self.metrics.admin_requests.labels(outcome.split(" ")[0]).inc(),
            redact=REDACTOR.redact_value,
        )
        self.admin = AdminServer(self.state, cfg.daemon.admin, cfg.daemon.allow_remote_admin)
        try:
            await self.admin.start()
        except OSError as e:
            self.log.error("cannot bind the admin port", admin=cfg.daemon.admin, error=describe(e))
            await tree.stop()
            return EXIT_GAVE_UP
        self._spawn(self._watchdog())
        self._spawn(self._status_updates(tree.bus.subscribe(maxlen=1000)))
        self.notifier.ready(self._summary("running"))
        self.log.info("ready", admin=cfg.daemon.admin, mutations="on" if token else "off")

        stop_wait = asyncio.ensure_future(self._stop.wait())
        tree_wait = asyncio.ensure_future(tree.wait())
        await asyncio.wait({stop_wait, tree_wait}, return_when=asyncio.FIRST_COMPLETED)
        gave_up = tree_wait.done()
        stop_wait.cancel()
        tree_wait.cancel()
        if gave_up:
            reason = tree_wait.result()
            self.log.error("the root supervisor gave up", reason=reason.kind, detail=reason.detail)
            self.notifier.stopping(f"root supervisor gave up: {reason}")
        else:
            self.notifier.stopping("stopping: stopping children in reverse order")
        self.state.draining = True
        began = time.monotonic()
        report = await tree.stop()
        self.log.info(
            "stopped",
            took_s=round(time.monotonic() - began, 3),
            unstopped=list(report.unstopped),
        )
        await self.admin.stop()
        sub.close()
        for task in list(self._tasks):
            task.cancel()
        if gave_up:
            return EXIT_GAVE_UP if tree_wait.result().detail != "auto_shutdown" else EXIT_OK
        return EXIT_OK

    def _on_stop_signal(self, sig: int) -> None:
        self.log.info("stop requested", signal=signal.Signals(sig).name)
        if self.state is not None:
            self.state.draining = True
        self._stop.set()

    def _on_sighup(self) -> None:
        self._spawn(self.reload())

    def _render_metrics(self) -> tuple[bytes, str]:
        if self.tree is not None:
            dropped = sum(s.dropped for s in self.tree.bus._subs)
            self.metrics.events_dropped.set(dropped)
        if self.writer is not None:
            self.metrics.log_lines_dropped.set(self.writer.dropped)
        return self.metrics.render()

    def _summary(self, prefix: str) -> str:
        if self.tree is None:
            return prefix
        states = [child.state for child in self.tree.rt.walk()]
        running = sum(1 for st in states if st is State.RUNNING)
        return f"{prefix}: {running}/{len(states)} children running"

    async def _status_updates(self, sub: Any) -> None:
        """STATUS= whenever a child starts or exits (at most every half second), for `systemctl status`."""
        from .core import ChildExited, ChildStarted

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

    async def reload(self) -> dict[str, Any]:
        """Re-read the config; on error keep everything untouched; else apply only the difference."""
        async with self._reload_lock:
            self.notifier.reloading()
            self.log.info("reloading", config=self.config.file if self.config else self.config_path)
            try:
                new, token = self.load()
            except ConfigError as e:
                self.metrics.reload_result(False)
                self.log.error("reload failed; keeping the running configuration", error=str(e))
                self.notifier.ready(f"reload failed, running the previous config: {e}")
                return {"ok": False, "error": str(e), "changes": []}
            old = self.config
            tree = self.tree
            assert old is not None and tree is not None and self.state is not None
            if new.daemon.admin != old.daemon.admin:
                self.log.warning("daemon.admin changed: it takes effect at the next start", admin=new.daemon.admin)
            try:
                changes = await apply_difference(tree, old, new)
            except Exception as e:  # noqa: BLE001 - report, keep running
                self.metrics.reload_result(False)
                self.log.error("reload failed while applying", error=describe(e))
                self.notifier.ready(f"reload failed: {describe(e)}")
                return {"ok": False, "error": describe(e), "changes": []}
            self.config = new
            self.state.token = token
            # old children may still speak while they stop: keep the previous secrets until the next reload
            current = new.secrets | ({token} if token else set())
            REDACTOR.update(self._secrets | current)
            self._secrets = current
            self.metrics.reload_result(True)
            described = [{"path": p, "change": c} for p, c in changes]
            self.log.info("reloaded", changes=described)
            self.notifier.ready(self._summary(f"reloaded ({len(changes)} changes)"))
            return {"ok": True, "changes": described}


async def apply_difference(tree: Tree, old: Config, new: Config) -> list[tuple[str, str]]:
    """Walk the new tree; each supervisor reconciles its own children (started, stopped, restarted, untouched)."""
    changes: list[tuple[str, str]] = []

    async def walk(path: str, spec: SupervisorSpec) -> None:
        replace = set()
        for child in spec.children:
            cpath = f"{path}/{child.id}" if path else child.id
            before, after = old.entries.get(cpath), new.entries.get(cpath)
            if (
                before is not None
                and after is not None
                and (before.kind != after.kind or before.fingerprint != after.fingerprint)
            ):
                replace.add(child.id)
        changes.extend(await tree.supervisor(path).reconcile(list(spec.children), replace, spec.flags))
        for child in spec.children:
            cpath = f"{path}/{child.id}" if path else child.id
            if isinstance(child, SupervisorSpec) and child.id not in replace and cpath in old.entries:
                with contextlib.suppress(LookupError):
                    await walk(cpath, child)

    await walk("", new.tree)
    tree.spec = new.tree
    return changes


def find_health(tree: Tree) -> Any:
    """The running health monitor's handle, looked up on every request so that it follows restarts."""
    for child in tree.rt.walk():
        h = child.handle
        if child.alive and all(hasattr(h, a) for a in ("document", "check_now", "ready")):
            return h
    return None


def run_daemon(config_path: str | None) -> int:
    """Run on uvloop when installed, asyncio otherwise."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(Daemon(config_path).run())
    finally:
        close_writers()  # the last lines (the stop report) reach stdout before we exit
