"""Where a running daemon can be found: a small state file it writes when its admin port is bound, so that ``ctl``
run in another terminal (or by ``ExecReload=``) reaches the daemon actually running, with the token file that
daemon reads — not whatever ``config/supervision.toml`` in the current directory says.

The file is ``daemon-<pid>.json`` in the first writable of: ``$RUNTIME_DIRECTORY`` (systemd's
``RuntimeDirectory=``), ``$XDG_RUNTIME_DIR/mcp-supervisor``, ``/run/mcp-supervisor`` (root), and
``$TMPDIR/mcp-supervisor-<uid>``; readers look in the same order. It holds no secret (the token file's path, not the
token), is removed at a clean stop, and a file whose pid is no longer a daemon is ignored (and cleaned up when its
directory is writable).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PREFIX = "daemon-"


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    """One running daemon, as its state file describes it."""

    pid: int
    admin: str  # host:port or unix:/path
    config: str  # absolute path of the config it runs
    token_file: str | None  # absolute path of its admin token file (None: mutations are off)
    started_at: float
    version: str

    def describe(self) -> str:
        return f"pid {self.pid}, admin {self.admin}, config {self.config}"


def directories() -> list[Path]:
    """Where state files may be, in the order a daemon tries to write them."""
    out: list[Path] = []
    if os.environ.get("RUNTIME_DIRECTORY"):
        out += [Path(p) for p in os.environ["RUNTIME_DIRECTORY"].split(":") if p]
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "mcp-supervisor")
    out.append(Path("/run/mcp-supervisor"))
    out.append(Path(tempfile.gettempdir()) / f"mcp-supervisor-{os.getuid()}")
    return list(dict.fromkeys(out))


def _usable(directory: Path) -> bool:
    """Ours to write in: exists (or was made) as a directory of ours, not writable by others."""
    try:
        directory.mkdir(mode=0o755, parents=False, exist_ok=True)
        st = directory.lstat()
    except OSError:
        return False
    return (
        os.path.isdir(directory)
        and not directory.is_symlink()
        and st.st_uid == os.getuid()
        and not st.st_mode & 0o022
        and os.access(directory, os.W_OK)
    )


def write(info: DaemonInfo) -> Path | None:
    """Write ``info`` atomically; the path written, or None when no directory is usable (nothing fails)."""
    for directory in directories():
        if not _usable(directory):
            continue
        path = directory / f"{PREFIX}{info.pid}.json"
        tmp = directory / f".{PREFIX}{info.pid}.tmp"
        try:
            tmp.write_text(json.dumps(asdict(info)) + "\n", encoding="utf-8")
            tmp.chmod(0o644)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            continue
        return path
    return None


def remove(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def _started(pid: int) -> float | None:
    """When ``pid`` started, by the wall clock (to about a second: the boot time is whole seconds)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        ticks = int(stat[stat.rfind(b")") + 2 :].split()[19])
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return None


def _is_daemon(info: DaemonInfo) -> bool:
    """``info.pid`` is still the daemon that wrote the file: a daemon's command line, and a process that started
    before the file was written — a reused pid (the daemon was killed, another process got its number) started
    after. Signalling a stranger (``ctl reload`` sends SIGHUP) must never happen."""
    try:
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes()
    except OSError:
        return False
    if b"mcp-supervisor" not in cmdline and b"mcp_supervisor" not in cmdline:
        return False
    started = _started(info.pid)
    return started is not None and started <= info.started_at + 1.5


def running(everywhere: bool = False) -> list[DaemonInfo]:
    """The daemons whose state files name a live daemon process, oldest first: those of the first directory that has
    any (a user's own, ``$XDG_RUNTIME_DIR``, before the system's), or of every directory (``everywhere``)."""
    found: dict[int, DaemonInfo] = {}
    for directory in directories():
        if found and not everywhere:
            break
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if not (name.startswith(PREFIX) and name.endswith(".json")):
                continue
            path = directory / name
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                info = DaemonInfo(**doc)
            except (OSError, ValueError, TypeError):
                continue
            if _is_daemon(info):
                found.setdefault(info.pid, info)
            elif os.access(directory, os.W_OK):
                remove(path)  # a daemon that was killed (kill -9) left it behind
    return sorted(found.values(), key=lambda i: i.started_at)


def describe_for(config: str, admin: str, token_file: str | None, version: str) -> DaemonInfo:
    """This process's record: paths made absolute against the current directory (where the daemon resolves them)."""
    return DaemonInfo(
        pid=os.getpid(),
        admin=admin,
        config=os.path.abspath(config),
        token_file=os.path.abspath(token_file) if token_file else None,
        started_at=time.time(),
        version=version,
    )
