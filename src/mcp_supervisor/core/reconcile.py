"""Reload by difference, as a plan: from the children a supervisor has and the specs it should have, which to stop
and forget, which to replace, which to keep (same incarnation, same restart count) and which to add — and the new
order. Pure; the supervisor carries the plan out in its own task."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .child import Child
from .specs import ChildSpec


class Step(enum.StrEnum):
    KEEP = "keep"  # same settings: untouched; a later restart uses the new spec
    REPLACE = "changed"  # stop, take the new spec, start again
    ADD = "added"


@dataclass(frozen=True, slots=True)
class Plan:
    removed: list[Child]  # to stop and forget, in the order to stop them (reverse start order)
    steps: list[tuple[Step, Child | None, ChildSpec]]  # in the new start order


def plan(children: Sequence[Child], specs: Sequence[ChildSpec], replace: set[str]) -> Plan:
    """``replace``: ids whose spec changed in a way that needs a new incarnation (the config's fingerprint)."""
    wanted = {s.id for s in specs}
    by_id = {c.id: c for c in children}
    removed = [c for c in reversed(children) if c.id not in wanted]
    steps: list[tuple[Step, Child | None, ChildSpec]] = []
    for spec in specs:
        found = by_id.get(spec.id)
        if found is None:
            steps.append((Step.ADD, None, spec))
        else:
            steps.append((Step.REPLACE if spec.id in replace else Step.KEEP, found, spec))
    return Plan(removed, steps)
