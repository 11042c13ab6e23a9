"""What the daemon watches of a running OS child: readiness (a TCP port, a command), liveness (HTTP, TCP, a
command, ``failures`` in a row), and resident memory (``max_memory``, two looks in a row)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .clock import wait_done
from .events import EventBus
from .launch import child_env
from .osprocess import OsProcess
from .specs import Liveness, ProcessSpec, ReadyCommand, ReadyOutput, ReadyTCP

_PAGE = os.sysconf("SC_PAGE_SIZE")


async def tcp_ready(ready: ReadyTCP, proc: OsProcess) -> bool:
    interval = 0.01
    while not proc.exited.done():
        try:
            async with asyncio.timeout(1.0):
                _, writer = await asyncio.open_connection(ready.host, ready.port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        except (OSError, TimeoutError):
            pass
        if await wait_done(None, proc.exited, interval):
            break
        interval = min(interval * 2, 0.25)
    return False


async def check_command(command: Sequence[str], spec: ProcessSpec, proc: OsProcess, bus: EventBus, what: str) -> int:
    """Run a check command in the child's environment (its own session, output discarded); its exit code."""
    check = subprocess.Popen(  # noqa: ASYNC220 - fork/exec returns at once; exit is awaited via pidfd
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(spec),
        cwd=spec.cwd,
        start_new_session=True,
        close_fds=True,
    )
    checker = OsProcess(check, f"{proc.path}#{what}", bus, None)
    try:
        return await checker.exited
    finally:
        checker.kill_now()  # a no-op once it exited; kills it when the caller gave up (timeout, cancel)


async def run_once(
    command: Sequence[str], path: str, stdin: bytes, env: Mapping[str, str], timeout: float
) -> tuple[int | None, list[str]]:
    """Run ``command`` in its own session with ``stdin`` (small: the pipe holds it), its output kept: its exit code
    (None: it ran past ``timeout`` seconds and was killed with its group) and its last output lines."""
    popen = subprocess.Popen(  # noqa: ASYNC220 - fork/exec returns at once; exit is awaited via pidfd
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env),
        start_new_session=True, close_fds=True,
    )  # fmt: skip
    bus = EventBus()
    listener = bus.subscribe(maxlen=1)  # its output is kept (the tail) only while someone listens; it goes nowhere
    proc = OsProcess(popen, path, bus, None, stop_signal=signal.SIGKILL)
    try:
        assert popen.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            popen.stdin.write(stdin)
        popen.stdin.close()
        async with asyncio.timeout(timeout):
            code: int | None = await proc.exited
    except TimeoutError:
        code = None
    finally:
        proc.kill_now()  # a no-op once it exited; else it and its group go now (its output drained)
        listener.close()
    return code, list(proc.tail)


async def is_ready(spec: ProcessSpec, proc: OsProcess, bus: EventBus) -> bool:
    """Wait for ``spec.ready`` (no readiness: ready at once); False when the process exited first."""
    if isinstance(spec.ready, ReadyTCP):
        return await tcp_ready(spec.ready, proc)
    if isinstance(spec.ready, ReadyCommand):
        return await command_ready(spec.ready, proc, spec, bus)
    if isinstance(spec.ready, ReadyOutput):
        return await output_ready(spec.ready, proc)
    return True


async def output_ready(ready: ReadyOutput, proc: OsProcess) -> bool:
    """Ready at the first output line ``ready.pattern`` finds; not ready if the process exits first (the start
    timeout bounds the wait, as for every readiness)."""
    line = proc.wait_line(ready.pattern)
    try:
        either: set[asyncio.Future[Any]] = {line, proc.exited}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        return line.done()
    finally:
        line.cancel()


async def command_ready(ready: ReadyCommand, proc: OsProcess, spec: ProcessSpec, bus: EventBus) -> bool:
    while not proc.exited.done():
        code = await check_command(ready.command, spec, proc, bus, "ready")
        if code == 0:
            return True
        if await wait_done(None, proc.exited, ready.interval):
            break
    return False


def resident_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and every descendant still in its process group (``/proc``'s children lists)."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[2]) != pid:  # left the group (setsid): not ours to count
                continue
            total += int(fields[21]) * _PAGE
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", "rb") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


async def watch_memory(spec: ProcessSpec, proc: OsProcess) -> None:
    """Two looks in a row above ``max_memory`` end the child (a single spike is forgiven)."""
    assert spec.max_memory is not None
    above = 0
    while not await wait_done(None, proc.exited, spec.memory_check):
        rss = resident_bytes(proc.pid)
        proc.usage.peak_rss_bytes = max(proc.usage.peak_rss_bytes, rss)  # a closer look than the scans'
        above = above + 1 if rss > spec.max_memory else 0
        if above >= 2:
            detail = f"max_memory: resident {_mib(rss)} above {_mib(spec.max_memory)}"
            proc.end_for("max_memory", detail, spec.shutdown_timeout)
            return


async def _check_http(url: str) -> str | None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {target} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    fields = line.split()
    if len(fields) < 2 or not fields[1].isdigit():
        return "not an HTTP answer"
    status = int(fields[1])
    return None if 200 <= status < 400 else f"HTTP {status}"


async def _check(live: Liveness, proc: OsProcess, spec: ProcessSpec, bus: EventBus) -> str | None:
    """None when the check passed, else what failed."""
    try:
        async with asyncio.timeout(live.timeout):
            if live.http is not None:
                return await _check_http(live.http)
            if live.tcp is not None:
                _, writer = await asyncio.open_connection(*live.tcp)
                writer.close()
                return None
            assert live.command is not None
            code = await check_command(live.command, spec, proc, bus, "live")
            return None if code == 0 else f"command exited with {code}"
    except TimeoutError:
        return f"no answer within {live.timeout:g}s"
    except OSError as e:
        return e.strerror or type(e).__name__


async def watch_liveness(spec: ProcessSpec, proc: OsProcess, bus: EventBus) -> None:
    """``failures`` failed checks in a row end the child as an abnormal exit with reason ``liveness``."""
    live = spec.live
    assert live is not None
    failed = 0
    while not await wait_done(None, proc.exited, live.every):
        problem = await _check(live, proc, spec, bus)
        failed = failed + 1 if problem is not None else 0
        if problem is not None and failed >= live.failures:
            detail = f"liveness: {failed} checks failed in a row (last: {problem})"
            proc.end_for("liveness", detail, spec.shutdown_timeout)
            return
