from __future__ import annotations

import dataclasses

import pytest

from mcp_supervisor.core import (
    AutoShutdown,
    Backoff,
    ProcessSpec,
    ReadyCommand,
    ReadyTCP,
    Restart,
    SpecError,
    Strategy,
    SupervisorFlags,
    SupervisorSpec,
    WorkerSpec,
)
from mcp_supervisor.core.intensity import add_restart


async def noop(ctx: object) -> None:
    return None


def w(id: str, **kw: object) -> WorkerSpec:
    return WorkerSpec(id=id, run=noop, **kw)  # type: ignore[arg-type]


def test_defaults_match_the_semantics_doc() -> None:
    spec = w("a")
    assert spec.restart is Restart.PERMANENT
    assert spec.shutdown == 5.0 and spec.shutdown_timeout == 5.0
    assert spec.significant is False and spec.backoff is None
    sup = SupervisorSpec(id="s")
    assert sup.shutdown == "infinity" and sup.shutdown_timeout is None
    assert sup.flags == SupervisorFlags(
        strategy=Strategy.ONE_FOR_ONE, intensity=3, period=5, auto_shutdown=AutoShutdown.NEVER
    )
    assert ProcessSpec(id="p", command=["true"]).shutdown_timeout == 5.0
    assert w("b", shutdown="brutal_kill").shutdown_timeout == 0.0


def test_specs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        w("a").id = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "field", "value"),
    [
        (lambda: w("a", shutdown=-1), "shutdown", "-1"),
        (lambda: w("a", shutdown="soon"), "shutdown", "'soon'"),
        (lambda: w("a", restart="sometimes"), "restart", "'sometimes'"),
        (lambda: w(""), "id", "''"),
        (lambda: w("a/b"), "id", "'a/b'"),
        (lambda: w("a", significant=True), "significant", "True"),
        (lambda: w("a", start_timeout=0), "start_timeout", "0"),
        (lambda: SupervisorFlags(intensity=-1), "intensity", "-1"),
        (lambda: SupervisorFlags(period=0), "period", "0"),
        (lambda: SupervisorFlags(strategy="one_for_some"), "strategy", "'one_for_some'"),  # type: ignore[arg-type]
        (lambda: SupervisorFlags(auto_shutdown="sometimes"), "auto_shutdown", "'sometimes'"),  # type: ignore[arg-type]
        (lambda: Backoff(initial=2, max=1), "backoff.max", "1"),
        (lambda: Backoff(jitter=2), "backoff.jitter", "2"),
        (lambda: ReadyTCP(host="127.0.0.1", port=70000), "ready.tcp", "70000"),
        # commands and env values may hold secrets: described by their kind, never quoted
        (lambda: ReadyCommand(command=[]), "ready.command", "an empty list"),
        (lambda: ProcessSpec(id="p", command=[]), "command", "an empty list"),
        (lambda: ProcessSpec(id="p", command="ls -l"), "command", "str"),
        (lambda: ProcessSpec(id="p", command=["x"], env={"A": 1}), "env.A", "int"),  # type: ignore[dict-item]
    ],
)
def test_invalid_fields_name_the_field_and_the_value(make: object, field: str, value: str) -> None:
    with pytest.raises(SpecError) as err:
        make()  # type: ignore[operator]
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert str(err.value).endswith(f"got {value}")


def test_supervisor_rejects_duplicates_and_bad_significance() -> None:
    with pytest.raises(SpecError, match=r"children\[1\]\.id: duplicate id"):
        SupervisorSpec(id="s", children=[w("a"), w("a")])
    with pytest.raises(SpecError, match=r"children\[0\]\.significant: .*auto_shutdown"):
        SupervisorSpec(id="s", children=[w("a", restart=Restart.TRANSIENT, significant=True)])
    ok = SupervisorSpec(
        id="s",
        children=[w("a", restart=Restart.TRANSIENT, significant=True)],
        flags=SupervisorFlags(auto_shutdown=AutoShutdown.ANY_SIGNIFICANT),
    )
    assert ok.children[0].significant
    with pytest.raises(SpecError, match="exactly one template"):
        SupervisorSpec(id="s", children=[w("a"), w("b")], flags=SupervisorFlags(strategy=Strategy.SIMPLE_ONE_FOR_ONE))


def test_long_shutdowns_are_allowed_but_warned_for_group_strategies() -> None:
    spec = SupervisorSpec(
        id="s", children=[w("a", shutdown=30), w("b")], flags=SupervisorFlags(strategy=Strategy.ONE_FOR_ALL)
    )
    warnings = spec.warnings()
    assert len(warnings) == 1 and "'a'" in warnings[0]
    assert SupervisorSpec(id="s", children=[w("a", shutdown=30)]).warnings() == []


def test_backoff_is_exponential_capped_and_jittered() -> None:
    b = Backoff(initial=0.5, max=4, jitter=0)
    assert [b.delay(n) for n in range(6)] == [0.5, 1, 2, 4, 4, 4]
    assert b.stable_after == 2.25
    j = Backoff(initial=1, max=100, jitter=0.1)
    assert j.delay(0, rand=0.0) == pytest.approx(0.9)
    assert j.delay(0, rand=0.999999) == pytest.approx(1.1, rel=1e-4)
    assert Backoff(initial=1, max=2, jitter=0.5).delay(10, rand=0.99) == 2  # the cap holds with jitter


def test_intensity_window_counts_every_attempt_with_an_inclusive_edge() -> None:
    r: tuple[float, ...] = ()
    for t in (0.0, 1.0, 2.0):
        ok, r = add_restart(r, t, intensity=3, period=5)
        assert ok
    ok, _ = add_restart(r, 3.0, intensity=3, period=5)
    assert not ok  # a 4th within 5 s
    ok, kept = add_restart(r, 5.0, intensity=3, period=5)
    assert not ok and kept == (0.0, 1.0, 2.0, 5.0)  # 5 - 0 <= 5: the edge is inside the window
    ok, kept = add_restart(r, 5.5, intensity=3, period=5)
    assert ok and kept == (1.0, 2.0, 5.5)
    assert add_restart((), 0.0, intensity=0, period=5)[0] is False  # intensity 0: never restart


def test_the_supervisors_incremental_window_agrees_with_the_pure_function() -> None:
    import random

    from mcp_supervisor.core.intensity import RestartWindow

    rng = random.Random(7)
    for _ in range(200):
        intensity, period = rng.randint(0, 5), rng.choice([0.5, 1.0, 5.0])
        window = RestartWindow(intensity, period)
        pure: tuple[float, ...] = ()
        now = 0.0
        for _ in range(30):
            now += rng.choice([0.0, 0.1, 0.5, 1.0, 2.5])
            ok, pure = add_restart(pure, now, intensity, period)
            assert window.add(now) is ok
            assert window.attempts == pure
