"""What a node does with one singleton each heartbeat, as a pure function (table-tested like ``core/policy.py``).

The fleet agent (``cluster.py``) reads the live nodes and the operator's wishes (``ctl move``) from PostgreSQL, asks
:func:`decide` for every singleton it knows, and runs the one statement the decision needs. Keeping the decision out
of the I/O makes its rules readable in one place and checkable row by row:

- a lease held here is renewed, unless the operator asked to move the singleton to another live node, or a
  preferred node is alive while this one is not preferred — then it is handed over (stopped, lease left to expire);
- a lease not held here is tried (taken only if expired, by the database) unless the operator wants it elsewhere
  or a preferred node is alive and this one is not preferred;
- eligibility (``nodes = [...]``, names or glob patterns) comes first: a node it does not allow never holds the
  singleton (a holder it no longer allows — after a reload — hands it over), a wish for such a node is void, and
  ``prefer`` counts only the allowed nodes.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass
from fnmatch import fnmatchcase


class Move(enum.StrEnum):
    RENEW = "renew"
    HAND_OVER = "hand_over"
    ACQUIRE = "acquire"
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class Decision:
    move: Move
    to: str | None = None
    """For a hand-over: the node the operator asked for (None: the preferred nodes)."""
    barred: bool = False
    """This node may not hold it (``nodes`` does not allow it)."""

    def reason(self) -> str:
        if self.barred:
            return "this node is not among its nodes"
        return f"handing over to {self.to or 'a preferred node'}"


def allowed(node: str, nodes: Collection[str]) -> bool:
    """``node`` may hold a singleton whose ``nodes`` are these names or glob patterns (none: every node)."""
    return not nodes or any(fnmatchcase(node, pattern) for pattern in nodes)


def decide(  # noqa: PLR0917 - the table's columns, in its order
    node: str,
    held: bool,
    wanted: str | None,
    live: Collection[str],
    prefer: Collection[str],
    nodes: Collection[str] = (),
) -> Decision:
    """``node``: this node; ``held``: it holds the lease; ``wanted``: the node an operator asked for
    (``leases.wanted``); ``live``: nodes whose heartbeat is within a lease; ``prefer``: the preferred nodes;
    ``nodes``: the names or patterns of the nodes that may hold it (empty: all)."""
    if not allowed(node, nodes):
        return Decision(Move.HAND_OVER, barred=True) if held else Decision(Move.WAIT, barred=True)
    # a wish for a dead node, or for one that may not hold it, is void
    move_to = wanted if wanted is not None and wanted in live and allowed(wanted, nodes) else None
    elsewhere = move_to is not None and move_to != node
    preferred_elsewhere = node not in prefer and any(n in live and allowed(n, nodes) for n in prefer)
    if held:
        if elsewhere or (preferred_elsewhere and move_to != node):
            return Decision(Move.HAND_OVER, move_to)
        return Decision(Move.RENEW)
    if elsewhere or (preferred_elsewhere and move_to != node):
        return Decision(Move.WAIT)
    return Decision(Move.ACQUIRE)
