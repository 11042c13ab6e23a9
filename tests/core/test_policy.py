"""The restart policy and the reload plan, table-tested as pure functions: no supervisor, no loop, no time.

Each table is one row group of docs/semantics.md; the differential test (tests/otp) checks the whole against OTP.
"""

from __future__ import annotations

from typing import Any

import pytest

from mcp_supervisor.core.child import Child
from mcp_supervisor.core.policy import Decision, after_exit, auto_shutdown, caught, restart_group, retry_group
from mcp_supervisor.core.reconcile import Step, plan
from mcp_supervisor.core.specs import AutoShutdown, Restart, Strategy, WorkerSpec

P, TR, TE = Restart.PERMANENT, Restart.TRANSIENT, Restart.TEMPORARY
RESTART, KEEP, REMOVE = Decision.RESTART, Decision.KEEP, Decision.REMOVE


@pytest.mark.parametrize(
    ("restart", "kind", "dynamic", "expected"),
    [
        (P, "normal", False, RESTART),
        (P, "shutdown", False, RESTART),
        (P, "abnormal", False, RESTART),
        (TR, "normal", False, KEEP),
        (TR, "shutdown", False, KEEP),
        (TR, "abnormal", False, RESTART),
        (TE, "normal", False, REMOVE),
        (TE, "shutdown", False, REMOVE),
        (TE, "abnormal", False, REMOVE),
        # simple_one_for_one: the spec is the template, so a child that is not restarted is forgotten
        (P, "normal", True, RESTART),
        (TR, "normal", True, REMOVE),
        (TR, "shutdown", True, REMOVE),
        (TR, "abnormal", True, RESTART),
        (TE, "abnormal", True, REMOVE),
    ],
)
def test_after_exit(restart: Restart, kind: Any, dynamic: bool, expected: Decision) -> None:
    assert after_exit(restart, kind, dynamic=dynamic) is expected


KIDS = ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("strategy", "failed", "expected"),
    [
        (Strategy.ONE_FOR_ONE, "b", ["b"]),
        (Strategy.SIMPLE_ONE_FOR_ONE, "c", ["c"]),
        (Strategy.ONE_FOR_ALL, "c", ["a", "b", "c", "d"]),
        (Strategy.ONE_FOR_ALL, "a", ["a", "b", "c", "d"]),
        (Strategy.REST_FOR_ONE, "a", ["a", "b", "c", "d"]),
        (Strategy.REST_FOR_ONE, "c", ["c", "d"]),
        (Strategy.REST_FOR_ONE, "d", ["d"]),
    ],
)
def test_restart_group(strategy: Strategy, failed: str, expected: list[str]) -> None:
    assert restart_group(strategy, KIDS, failed) == expected


def test_caught_drops_temporary_siblings_but_never_the_failed_child() -> None:
    kinds = {"a": P, "b": TE, "c": TR, "d": TE}
    assert caught(KIDS, "b", kinds.__getitem__) == ["d"]  # b itself is handled by after_exit
    assert caught(KIDS, "a", kinds.__getitem__) == ["b", "d"]
    assert caught(["a", "c"], "a", kinds.__getitem__) == []


@pytest.mark.parametrize(
    ("strategy", "failed_at", "expected"),
    [
        (Strategy.ONE_FOR_ALL, 2, ["a", "b", "c", "d"]),  # OTP stops what the attempt started, starts all again
        (Strategy.REST_FOR_ONE, 2, ["c", "d"]),
        (Strategy.REST_FOR_ONE, 0, ["a", "b", "c", "d"]),
        (Strategy.ONE_FOR_ONE, 0, ["a", "b", "c", "d"]),
        (Strategy.ONE_FOR_ONE, 3, ["d"]),
    ],
)
def test_retry_group(strategy: Strategy, failed_at: int, expected: list[str]) -> None:
    assert retry_group(strategy, KIDS, failed_at) == expected


@pytest.mark.parametrize(
    ("mode", "others_running", "expected"),
    [
        (AutoShutdown.NEVER, False, False),
        (AutoShutdown.NEVER, True, False),
        (AutoShutdown.ANY_SIGNIFICANT, True, True),
        (AutoShutdown.ANY_SIGNIFICANT, False, True),
        (AutoShutdown.ALL_SIGNIFICANT, True, False),
        (AutoShutdown.ALL_SIGNIFICANT, False, True),
    ],
)
def test_auto_shutdown(mode: AutoShutdown, others_running: bool, expected: bool) -> None:
    assert auto_shutdown(mode, others_running) is expected


async def _noop(ctx: Any) -> None:
    return None


def _child(cid: str) -> Child:
    spec = WorkerSpec(id=cid, run=_noop)
    return Child(spec, f"root/{cid}")


def test_plan_keeps_replaces_adds_and_removes_in_reverse_start_order() -> None:
    a, b, c, d = (_child(x) for x in "abcd")
    new = [WorkerSpec(id=x, run=_noop) for x in ("c", "a", "e")]
    result = plan([a, b, c, d], new, replace={"a"})
    assert result.removed == [d, b]  # stopped last-started first
    assert [(step, found, spec.id) for step, found, spec in result.steps] == [
        (Step.KEEP, c, "c"),
        (Step.REPLACE, a, "a"),
        (Step.ADD, None, "e"),
    ]


def test_plan_of_identical_specs_touches_nothing() -> None:
    kids = [_child(x) for x in "ab"]
    result = plan(kids, [k.spec for k in kids], replace=set())
    assert result.removed == []
    assert [step for step, _, _ in result.steps] == [Step.KEEP, Step.KEEP]


def test_plan_ignores_replace_ids_that_are_new() -> None:
    result = plan([], [WorkerSpec(id="x", run=_noop)], replace={"x"})
    assert [step for step, _, _ in result.steps] == [Step.ADD]
