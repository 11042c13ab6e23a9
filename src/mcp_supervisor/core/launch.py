"""The launch chain of an OS child: each step an ``exec`` of the next, so that the program keeps the first pid.

``bash`` joins the child's cgroup and moves held sockets to fd 3.. (setting LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID
before anything it runs can fork); util-linux ``prlimit`` sets the rlimits; ``setpriv`` changes user and group,
then sets the parent-death signal (a change of credentials would clear it) and execs the program.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import shlex
import shutil
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from .specs import RLIMITS, ProcessSpec

_PR_SET_PDEATHSIG = 1
_SCRUBBED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES",
                "MCP_FENCING_TOKEN")  # fmt: skip

try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no parent-death signal, the guardian still covers us
    _prctl = None


_SETPRIV = shutil.which("setpriv")
_PRLIMIT = shutil.which("prlimit")
_BASH = shutil.which("bash")


def resolve_program(spec: ProcessSpec, env: dict[str, str]) -> str:
    """The executable ``spec.command[0]`` names, found as exec would; FileNotFoundError names what is missing."""
    prog = spec.command[0]
    if "/" in prog:
        path = prog if os.path.isabs(prog) or spec.cwd is None else os.path.join(spec.cwd, prog)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return prog
        raise FileNotFoundError(f"command {prog!r} does not exist or is not executable")
    found = shutil.which(prog, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(f"command {prog!r} not found on PATH={env.get('PATH', os.defpath)!r}")
    return found


def ids_of(spec: ProcessSpec) -> tuple[int, int] | None:
    """The uid and gid to run as (``user``, ``group``), or None to stay who we are; OSError names what is wrong."""
    if spec.user is None and spec.group is None:
        return None
    uid, gid = os.geteuid(), os.getegid()
    if spec.user is not None:
        try:
            entry = pwd.getpwuid(int(spec.user)) if spec.user.isdigit() else pwd.getpwnam(spec.user)
        except (KeyError, ValueError):
            raise LookupError(f"user {spec.user!r} does not exist on this host") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    if spec.group is not None:
        try:
            gid = (grp.getgrgid(int(spec.group)) if spec.group.isdigit() else grp.getgrnam(spec.group)).gr_gid
        except (KeyError, ValueError):
            raise LookupError(f"group {spec.group!r} does not exist on this host") from None
    if os.geteuid() != 0 and (uid, gid) != (os.geteuid(), os.getegid()):
        raise PermissionError("running a child as another user or group needs the daemon to run as root")
    return uid, gid


def pdeathsig_preexec(parent_pid: int) -> Any:
    """A ``preexec_fn`` (or a forked child's first call): SIGKILL when ``parent_pid`` dies; exit if it is gone."""

    def set_pdeathsig() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the daemon died before prctl took effect
            os._exit(127)

    return set_pdeathsig


def move_fds(fds: Sequence[int]) -> str:
    """Shell redirections that put ``fds`` at 3, 4, ... (by way of free numbers above all of them) and close the
    rest: the socket-activation layout, whatever numbers the sockets have in the daemon."""
    base = max(*fds, 2 + len(fds)) + 1
    temps = [base + i for i in range(len(fds))]
    first = " ".join(f"{t}<&{f}" for t, f in zip(temps, fds, strict=True))
    close_src = " ".join(f"{f}<&-" for f in fds if f not in temps)
    final = " ".join(f"{3 + i}<&{t}" for i, t in enumerate(temps))
    close_tmp = " ".join(f"{t}<&-" for t in temps)
    return f"exec {first}; exec {close_src}; exec {final} {close_tmp}"


def launch(
    spec: ProcessSpec, sockets: Mapping[str, Any], cgroup: str | None = None
) -> tuple[list[str], tuple[int, ...], Any]:
    """The command line, the descriptors to pass and the preexec function that start ``spec.command`` with its
    limits, user, parent-death signal and held sockets — each step an ``exec`` of the next, so that the program
    keeps the pid the first one had (LISTEN_PID must be the program's own pid).

    ``bash`` joins the child's cgroup, moves held sockets to fds 3.. and sets LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID
    (before anything it runs can fork); util-linux ``prlimit``
    sets the rlimits; ``setpriv`` changes user and group, then sets the parent-death signal (a change of
    credentials would clear it) and execs the program. Without setpriv we fall back to prctl in ``preexec_fn``
    (a full fork of the daemon, about 1.3 ms more per spawn).
    """
    argv = list(spec.command)
    preexec = None
    ids = ids_of(spec)
    if _SETPRIV is not None:
        creds: list[str] = []
        if ids is not None:
            creds = ["--reuid", str(ids[0]), "--regid", str(ids[1])]
            creds += ["--init-groups"] if spec.user is not None else ["--clear-groups"]
        argv = [_SETPRIV, *creds, "--pdeathsig", "KILL", "--", *argv]
    elif ids is not None:
        raise FileNotFoundError("running a child as another user needs util-linux's setpriv, which is not installed")
    else:
        preexec = pdeathsig_preexec(os.getpid())
    if spec.limits:
        if _PRLIMIT is None:
            raise FileNotFoundError("limits need util-linux's prlimit, which is not installed")
        argv = [_PRLIMIT, *(f"--{RLIMITS[k]}={v}:{v}" for k, v in sorted(spec.limits.items())), "--", *argv]
    fds: tuple[int, ...] = ()
    prelude: list[str] = []
    if cgroup is not None:
        prelude.append(f"echo $$ > {shlex.quote(cgroup + '/cgroup.procs')} || exit 126")
    if spec.sockets:
        missing = [n for n in spec.sockets if n not in sockets]
        if missing:
            raise LookupError(f"socket {missing[0]!r} is not held by the daemon (see [[daemon.sockets]])")
        fds = tuple(sockets[n].fileno() for n in spec.sockets)
        names = ":".join(spec.sockets)
        prelude.append(move_fds(fds))
        prelude.append(f'export LISTEN_FDS={len(fds)} LISTEN_FDNAMES="{names}" LISTEN_PID=$$')
    if prelude:
        if _BASH is None:
            raise FileNotFoundError("held sockets and cgroups need bash, which is not installed")
        argv = [_BASH, "-c", "; ".join([*prelude, 'exec "$@"']), "mcp-supervisor-exec", *argv]
    return argv, fds, preexec


def child_env(spec: ProcessSpec) -> dict[str, str]:
    """The environment of a child: ours (unless ``inherit_env`` is false) without systemd's private variables."""
    env = dict(os.environ) if spec.inherit_env else {}
    for key in _SCRUBBED_ENV:
        env.pop(key, None)
    env.update(spec.env)
    if spec.fencing_token is not None:
        env["MCP_FENCING_TOKEN"] = str(spec.fencing_token)
    return env
