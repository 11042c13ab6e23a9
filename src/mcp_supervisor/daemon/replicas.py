"""Replicated OS children (``instances``): who the instances are, scaling them, and rolling restarts.

Instance ``i`` of the child at ``path`` is the sibling ``path#i``: each is its own child for restart purposes.
Scaling adds instances at the end (``start_child``) and removes the highest first; a rolling restart replaces one
instance at a time and goes on only once the new one passed its readiness check.
"""

from __future__ import annotations

from ..admin.seams import RollReport, ScaleReport
from ..config.model import INSTANCE_SEP, MAX_INSTANCES, ReplicaSet
from ..core import FailedToStartChild, OperationError, Tree


def _indexes(tree: Tree, path: str) -> dict[int, str]:
    parent, _, cid = path.rpartition("/")
    found: dict[int, str] = {}
    for node in tree.which_children(parent):
        base, sep, index = node.id.rpartition(INSTANCE_SEP)
        if sep and base == cid and index.isdigit():
            found[int(index)] = node.path
    return found


def instances(tree: Tree, path: str) -> list[str]:
    """The paths of the running tree's instances of ``path``, by index; ``[path]`` for a child without any."""
    found = _indexes(tree, path)
    if found:
        return [found[i] for i in sorted(found)]
    tree.child(path)  # NoSuchPath when there is no such child either
    return [path]


async def roll(tree: Tree, path: str) -> RollReport:
    """Restart the instances of ``path`` one at a time, each new one ready before the next old one stops; the
    first that fails to start stops the roll and the rest keep running as they are."""
    paths = instances(tree, path)
    for i, p in enumerate(paths):
        try:
            await tree.restart(p)
        except (FailedToStartChild, OperationError) as e:
            return RollReport(replaced=tuple(paths[:i]), failed=p, error=str(e), untouched=tuple(paths[i + 1 :]))
    return RollReport(replaced=tuple(paths))


async def scale(tree: Tree, replicas: ReplicaSet, count: int) -> ScaleReport:
    """Start or stop instances so that ``count`` run: new ones at the end, the highest index stopped first.

    Not persisted: the file's ``instances`` applies again at the next reload. A failed start raises
    FailedToStartChild (the instances started before it stay)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_INSTANCES:
        raise ValueError(f"instances must be an integer 0..{MAX_INSTANCES}, got {count!r}")
    have = _indexes(tree, replicas.path)
    started: list[str] = []
    stopped: list[str] = []
    for i in sorted(have, reverse=True):
        if i >= count:
            p = have[i]
            await tree.terminate_child(p)
            await tree.delete_child(p)
            stopped.append(p)
    for i in range(count):
        if i not in have:
            started.append(await tree.start_child(replicas.parent, replicas.make(i)))
    return ScaleReport(started=tuple(started), stopped=tuple(stopped))
