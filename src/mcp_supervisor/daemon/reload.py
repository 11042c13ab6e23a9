"""A reload by difference: each supervisor of the new tree reconciles its own children — new ones start, removed
ones stop, changed ones restart (replicated ones one at a time when ``reload = "rolling"``), unchanged ones are left
as they are (same pid, same restart count), and an unchanged child with a ``reload_signal`` gets that signal."""

from __future__ import annotations

import contextlib
import signal

from ..admin.journal import DEFAULT_LOG_BYTES, DEFAULT_LOG_LINES, Limits
from ..config import Config
from ..config.model import INSTANCE_SEP
from ..core import ChildSpec, OperationError, ProcessSpec, SupervisorSpec, Tree


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
            elif isinstance(child, ProcessSpec) and child.reload_signal is not None and cpath in old.entries:
                if child.id not in replace and child.id not in rolling:  # unchanged: it re-reads its own files
                    with contextlib.suppress(LookupError, OperationError):
                        tree.signal(cpath, child.reload_signal)
                        changes.append((cpath, f"signalled {signal.Signals(child.reload_signal).name}"))

    await walk("", new.tree)
    tree.spec = new.tree
    return changes
