"""An OS-process child's task: launch it (``launch``), watch its exit and output (``osprocess``), its readiness,
liveness and memory (``watches``); a program that daemonizes itself is followed to the process its pidfile names.

Why not ``asyncio.create_subprocess_exec``: we need ``prctl(PR_SET_PDEATHSIG)`` in the child, exit detection that
works the same on asyncio and uvloop (a pidfd in the loop's selector; avoids MagicStack/uvloop#128 and #118), and
to kill what is left of the group *before* reaping the leader, while its pgid cannot yet be reused.

Nothing outlives the daemon: each child gets SIGKILL when the daemon's thread that spawned it dies
(PDEATHSIG), and the guardian (``guardian.py``) SIGKILLs every registered group when the daemon's pipe to it
closes — which happens even on ``kill -9`` of the daemon — so grandchildren go too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from .cgroups import Cgroups
from .context import ChildContext
from .escapes import Escapes
from .events import EventBus, ExitReason
from .forkserver import ForkServer
from .guardian import Guardian
from .osprocess import ForkedProcess, OsProcess, start_time
from .specs import ProcessSpec
from .watches import is_ready, watch_liveness, watch_memory

__all__ = ["Guardian", "OsProcess", "run_process"]


def _read_small(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read(64)


def _pidfile_path(spec: ProcessSpec) -> str:
    assert spec.pidfile is not None
    return spec.pidfile if os.path.isabs(spec.pidfile) or spec.cwd is None else os.path.join(spec.cwd, spec.pidfile)


async def _read_pidfile(spec: ProcessSpec) -> int:
    """The pid in the child's pidfile, once it names a live process (the start timeout bounds the wait)."""
    path = _pidfile_path(spec)
    delay = 0.01
    while True:
        with contextlib.suppress(OSError, ValueError):
            pid = int(_read_small(path).strip())  # a few bytes on a local disk: no thread needed
            if pid > 1:
                os.kill(pid, 0)  # alive (and ours to signal)
                return pid
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


async def _adopt(
    spec: ProcessSpec, launcher: OsProcess, bus: EventBus, guardian: Guardian | None, escapes: Escapes | None
) -> OsProcess | ExitReason:
    """The program a daemonizing launcher started, found by its pidfile once the launcher exited 0; else why not."""
    launcher.kill_group_on_exit = False
    code = await launcher.exited
    if code != 0:
        return launcher.reason(code)
    pid = await _read_pidfile(spec)
    started = start_time(pid)
    if started is None or launcher.started_ticks is None or started < launcher.started_ticks:
        # a stale pidfile, or one naming somebody else's process: never adopted, signalled or killed by us
        return ExitReason("abnormal", f"its pidfile {spec.pidfile} names pid {pid}, which is not a process it "
                          "started (it was running before); fix the pidfile setting")  # fmt: skip
    return OsProcess.adopt(pid, launcher, bus, guardian, escapes, spec.stop_signal)


async def run_process(  # noqa: PLR0917
    spec: ProcessSpec,
    path: str,
    ctx: ChildContext[Any],
    bus: EventBus,
    guardian: Guardian | None,
    escapes: Escapes | None,
    on_spawn: Callable[[OsProcess], None],
    sockets: Mapping[str, Any] | None = None,
    cgroups: Cgroups | None = None,
    forks: ForkServer | None = None,
) -> ExitReason:
    """The body of a process child's task: spawn (``on_spawn`` learns the process), wait for readiness, report
    ready, watch its memory and liveness, wait for the exit; its reason by the rules of :meth:`OsProcess.reason`."""
    if spec.pidfile is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_pidfile_path(spec))  # an earlier run's: its pid may belong to another process by now
    proc: OsProcess | None = None
    if spec.template is not None and forks is not None and not spec.sockets and spec.pidfile is None:
        with contextlib.suppress(OSError):  # no fork server: exec the command
            proc = await ForkedProcess.fork(forks, spec, path, bus, guardian, escapes, cgroups)
    if proc is None:
        proc = OsProcess.spawn(spec, path, bus, guardian, None if spec.pidfile else escapes, sockets, cgroups)
    proc.exit_reasons = spec.exit_reasons
    on_spawn(proc)
    watchers: list[asyncio.Task[None]] = []
    try:
        if spec.pidfile is not None:  # it daemonizes itself: the launcher exits, the pidfile names the program
            adopted = await _adopt(spec, proc, bus, guardian, escapes)
            if isinstance(adopted, ExitReason):
                return adopted
            proc = adopted
            on_spawn(proc)
        if await is_ready(spec, proc, bus):
            ctx.started(proc.pid)
            if spec.max_memory is not None:
                watchers.append(asyncio.ensure_future(watch_memory(spec, proc)))
            if spec.live is not None:
                watchers.append(asyncio.ensure_future(watch_liveness(spec, proc, bus)))
        code = await proc.exited
    except BaseException:
        proc.kill_now()
        raise
    finally:
        for w in watchers:
            w.cancel()
    return proc.reason(code)
