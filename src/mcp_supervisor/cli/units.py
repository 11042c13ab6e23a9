"""``mcp-supervisor systemd-unit``: a systemd unit for this install and this config (``pm2 startup``'s job).

The unit is derived, not copied: ``ExecStart=`` is the real command of this install (the venv's, pipx's, ...), the
config path is absolute, and the sandbox fits what the config uses — children run as another ``user``/``group``
(root with only ``CAP_SETUID``/``CAP_SETGID``/``CAP_KILL``, no ``PrivateUsers=``, ``/proc`` visible), ``limits``
(``setrlimit`` allowed, ``CAP_SYS_RESOURCE`` to raise a hard limit), held sockets below 1024
(``CAP_NET_BIND_SERVICE``), per-child cgroups (``Delegate=yes``). Otherwise it runs as a ``DynamicUser=`` in a
tight sandbox. ``Type=notify-reload`` only on systemd >= 253 (Debian 12 has 252: ``Type=notify`` with a synchronous
``ExecReload=`` instead). ``--user`` makes a unit for ``systemctl --user`` (no privileges, no system sandbox).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..core import ProcessSpec, SupervisorSpec

NOTIFY_RELOAD_SINCE = 253
RESTART_STEPS_SINCE = 254


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitOptions:
    exe: str  # the absolute path of the mcp-supervisor command
    config: str  # the absolute path of the config file
    name: str = "mcp-supervisor"
    user_unit: bool = False  # for `systemctl --user`
    delegate: bool = False  # per-child cgroups (Delegate=yes)
    sockets: bool = False  # also a .socket unit holding [[daemon.sockets]] (socket activation)
    notify_reload: bool = False  # Type=notify-reload (systemd >= 253)
    systemd_version: int = 0  # 0: unknown (treated as the oldest supported)
    generated_by: str = ""  # the command line that made it (in its header)


@dataclass(slots=True)
class Needs:
    """What the config asks of the sandbox."""

    switch_user: bool = False
    limits: bool = False
    low_ports: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def needs_of(cfg: Config) -> Needs:
    needs = Needs()

    def walk(spec: SupervisorSpec) -> None:
        for child in spec.children:
            if isinstance(child, SupervisorSpec):
                walk(child)
            elif isinstance(child, ProcessSpec):
                if (child.user or child.group) and not needs.switch_user:
                    needs.switch_user = True
                    needs.reasons.append(f"{child.id}: runs as user/group {child.user or child.group}: root, "
                                         "CAP_SETUID and CAP_SETGID")  # fmt: skip
                if child.limits and not needs.limits:
                    needs.limits = True
                    needs.reasons.append(f"{child.id}: sets limits: setrlimit allowed, CAP_SYS_RESOURCE")

    walk(cfg.tree)
    for single in cfg.singletons.values():
        if isinstance(single.spec, ProcessSpec) and (single.spec.user or single.spec.group):
            needs.switch_user = True
    for sock in cfg.daemon.sockets:
        if not sock.listen.unix and sock.listen.port < 1024:
            needs.low_ports.append(sock.listen.port)
    if needs.low_ports:
        needs.reasons.append(f"held sockets on ports {needs.low_ports}: CAP_NET_BIND_SERVICE")
    return needs


def systemd_version() -> int:
    """The installed systemd's version (0 when it cannot be told)."""
    for cmd in (["systemctl", "--version"], ["systemd-analyze", "--version"]):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.search(r"systemd (\d+)", out)
        if m:
            return int(m.group(1))
    return 0


def this_command() -> str:
    """The absolute path of the command running now (the entry point of this install)."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "mcp-supervisor" and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    found = shutil.which("mcp-supervisor")
    if found:
        return os.path.abspath(found)
    return str(Path(sys.executable).with_name("mcp-supervisor"))


def render(cfg: Config, opts: UnitOptions, config_text: str = "") -> tuple[dict[str, str], list[str]]:  # noqa: PLR0912 - one unit file, one branch per directive a feature needs
    """The unit file(s) by name, and warnings for the operator."""
    warnings: list[str] = []
    needs = needs_of(cfg)
    reload_native = opts.notify_reload and opts.systemd_version >= NOTIFY_RELOAD_SINCE
    if opts.notify_reload and not reload_native:
        shown = opts.systemd_version or "unknown"
        warnings.append(f"systemd {shown} does not know Type=notify-reload (it needs {NOTIFY_RELOAD_SINCE}): "
                        "the unit uses Type=notify with a synchronous ExecReload=")  # fmt: skip
    exe, conf = opts.exe, opts.config
    lines = [
        f"# {opts.name}.service, generated by: mcp-supervisor systemd-unit {opts.generated_by}".rstrip(),
        "# Regenerate it after changing the install or what the config needs (users, limits, low ports, cgroups).",
        "# Comments sit on their own lines: a trailing '# ...' would become part of the value.",
        *[f"# needs: {r}" for r in needs.reasons],
        "[Unit]",
        "Description=mcp-supervisor supervision tree",
        "Documentation=https://pypi.org/project/mcp-supervisor-otp/",
    ]
    if not opts.user_unit:
        lines += ["Wants=network-online.target", "After=network-online.target"]
    if opts.sockets and cfg.daemon.sockets:
        lines += [f"Requires={opts.name}.socket", f"After={opts.name}.socket"]
    lines += [
        "# give up after ~10 crash loops in 15 minutes ([Unit], not [Service])",
        "StartLimitIntervalSec=15min",
        "StartLimitBurst=10",
        "",
        "[Service]",
        f"Type={'notify-reload' if reload_native else 'notify'}",
        "NotifyAccess=main",
        "# run checks the config first and exits 78 before READY=1 (RestartPreventExitStatus= ignores ExecStartPre=)",
        f"ExecStart={exe} run --config {conf}",
    ]
    if reload_native:
        lines.append("ReloadSignal=SIGHUP")
    else:
        lines += ["# synchronous: returns when the difference is applied, fails (78) when the new file is invalid",
                  f"ExecReload={exe} ctl --config {conf} reload --wait"]  # fmt: skip
    lines += [
        "TimeoutStartSec=90s",
        "# more than the sum of the children's shutdown times",
        f"TimeoutStopSec={max(45, int(_shutdown_budget(cfg.tree)) + 15)}s",
        "# the daemon pings every half of it, from its event loop",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "RestartSec=1s",
    ]
    if opts.systemd_version >= RESTART_STEPS_SINCE:
        lines += ["RestartSteps=8", "RestartMaxDelaySec=2min"]
    lines += [
        "# EX_CONFIG: a bad config file must not crash-loop",
        "RestartPreventExitStatus=78",
        "# SIGTERM to the daemon only (it stops children in reverse order); SIGKILL to leftovers afterwards",
        "KillMode=mixed",
        "Environment=PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1",
    ]
    if opts.delegate:
        lines += ["# a cgroup per OS child (memory accounting, a kill that reaches every descendant)", "Delegate=yes"]
    token = cfg.daemon.admin_token_file
    if token and not opts.user_unit:
        lines.append(f"LoadCredential={os.path.basename(token)}:{os.path.abspath(token)}")
        if "CREDENTIALS_DIRECTORY" not in config_text:
            warnings.append(
                "the config reads its token from a plain path; with the credential, write admin_token_file = "
                f'"${{CREDENTIALS_DIRECTORY:-{os.path.dirname(token)}}}/{os.path.basename(token)}" so that the '
                "service reads the copy systemd hands it (a dynamic user cannot read a root-owned file)"
            )
    if opts.user_unit:
        lines += ["", "[Install]", "WantedBy=default.target"]
    else:
        lines += _sandbox(needs, opts)
        lines += ["", "[Install]", "WantedBy=multi-user.target"]
    units = {f"{opts.name}.service": "\n".join(lines) + "\n"}
    if opts.sockets:
        if not cfg.daemon.sockets:
            warnings.append("--sockets: the config declares no [[daemon.sockets]]; no .socket unit")
        else:
            units[f"{opts.name}.socket"] = _socket_unit(cfg, opts)
    return units, warnings


def _sandbox(needs: Needs, opts: UnitOptions) -> list[str]:
    caps: list[str] = []
    if needs.switch_user:
        caps += ["CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE"]
    if needs.limits:
        caps.append("CAP_SYS_RESOURCE")
    if needs.low_ports:
        caps.append("CAP_NET_BIND_SERVICE")
    out: list[str] = []
    if needs.switch_user or opts.delegate:
        out += ["# root (children switch user; a delegated cgroup is written), with only these capabilities"]
    else:
        out += ["DynamicUser=yes"]
    out += [
        "ConfigurationDirectory=mcp-supervisor",
        "StateDirectory=mcp-supervisor",
        "# /run/mcp-supervisor: the admin unix socket may live there, and the state file ctl reads",
        "RuntimeDirectory=mcp-supervisor",
        "RuntimeDirectoryMode=0755",
        "UMask=0077",
        "NoNewPrivileges=yes",
        f"CapabilityBoundingSet={' '.join(caps)}",
    ]
    if caps and not (needs.switch_user or opts.delegate):
        out.append(f"AmbientCapabilities={' '.join(caps)}")
    out += [
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
    ]
    if not needs.switch_user:
        out += ["PrivateUsers=yes", "ProtectProc=invisible"]
    else:
        out += ["# not PrivateUsers= nor ProtectProc=invisible: children run as other users, and the daemon reads",
                "# their /proc (memory, descendants)"]  # fmt: skip
    out += ["ProtectHostname=yes", "ProtectClock=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes"]  # fmt: skip
    if not opts.delegate:
        out.append("ProtectControlGroups=yes")
    out += [
        "# not ProcSubset=pid: it hides /proc/stat and silently removes the process_* metrics",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "# no MemoryDenyWriteExecute=: cffi callbacks in dependencies need W+X pages",
        "RemoveIPC=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
    ]
    denied = [] if needs.switch_user else ["@privileged"]
    if not needs.limits:
        denied.append("@resources")
    if denied:
        out.append(f"SystemCallFilter=~{' '.join(denied)}")
    out.append("SystemCallErrorNumber=EPERM")
    return out


def _socket_unit(cfg: Config, opts: UnitOptions) -> str:
    lines = [
        f"# {opts.name}.socket, generated by: mcp-supervisor systemd-unit {opts.generated_by}".rstrip(),
        "# systemd holds the [[daemon.sockets]] listeners; the daemon takes them by FileDescriptorName=.",
        "[Unit]",
        f"Description=mcp-supervisor held sockets ({', '.join(s.name for s in cfg.daemon.sockets)})",
        "",
        "[Socket]",
    ]
    for sock in cfg.daemon.sockets:
        listen = sock.listen.path or str(sock.listen)
        lines += [f"ListenStream={listen}", f"FileDescriptorName={sock.name}"]
        if sock.mode is not None:
            lines.append(f"SocketMode={sock.mode:04o}")
        lines.append(f"Backlog={sock.backlog}")
    lines += [f"Service={opts.name}.service", "", "[Install]", "WantedBy=sockets.target"]
    return "\n".join(lines) + "\n"


def _shutdown_budget(spec: SupervisorSpec) -> float:
    total = 0.0
    for child in spec.children:
        if isinstance(child, SupervisorSpec):
            total += _shutdown_budget(child)
        else:
            timeout = child.shutdown_timeout
            total += 30.0 if timeout is None else timeout
    return total
