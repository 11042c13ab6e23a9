"""The fleet agent's per-singleton decision, row by row (``daemon/leasing.py``; the agent runs it every heartbeat)."""

from __future__ import annotations

import pytest

from mcp_supervisor.daemon.leasing import Decision, Move, allowed, decide

LIVE = {"a", "b", "c"}
# node, held, wanted, live, prefer -> decision
ROWS = [
    # no preference, no wish: the holder renews, the others try (the database lets one of them take an expired lease)
    ("a", True, None, LIVE, (), Decision(Move.RENEW)),
    ("b", False, None, LIVE, (), Decision(Move.ACQUIRE)),
    # an operator's wish: the holder hands over to the wanted node, which takes it; others wait
    ("a", True, "b", LIVE, (), Decision(Move.HAND_OVER, "b")),
    ("b", False, "b", LIVE, (), Decision(Move.ACQUIRE)),
    ("c", False, "b", LIVE, (), Decision(Move.WAIT)),
    ("b", True, "b", LIVE, (), Decision(Move.RENEW)),
    # a wish for a node that is not live is void: business as usual
    ("a", True, "z", LIVE, (), Decision(Move.RENEW)),
    ("b", False, "z", LIVE, (), Decision(Move.ACQUIRE)),
    # preferred nodes: a non-preferred holder hands over while a preferred node is live; non-preferred nodes wait
    ("c", True, None, LIVE, ("a",), Decision(Move.HAND_OVER)),
    ("c", False, None, LIVE, ("a",), Decision(Move.WAIT)),
    ("a", False, None, LIVE, ("a",), Decision(Move.ACQUIRE)),
    ("a", True, None, LIVE, ("a",), Decision(Move.RENEW)),
    # ... any preferred node will do (a second one renews, it does not hand over to the first)
    ("b", True, None, LIVE, ("a", "b"), Decision(Move.RENEW)),
    # no preferred node is live: anyone may hold it
    ("c", False, None, {"c"}, ("a",), Decision(Move.ACQUIRE)),
    ("c", True, None, {"c"}, ("a",), Decision(Move.RENEW)),
    # an operator's wish beats the preference: moved to a non-preferred node, it is taken there and kept there
    ("a", True, "c", LIVE, ("a",), Decision(Move.HAND_OVER, "c")),
    ("c", False, "c", LIVE, ("a",), Decision(Move.ACQUIRE)),
    ("a", False, "c", LIVE, ("a",), Decision(Move.WAIT)),
    ("c", True, "c", LIVE, ("a",), Decision(Move.RENEW)),
]


Row = tuple[str, bool, str | None, set[str], tuple[str, ...], Decision]

# node, held, wanted, live, prefer, nodes -> decision: eligibility comes first
ELIGIBLE = [
    # a node the singleton's nodes do not allow never holds it; a holder it no longer allows (a reload) hands over
    ("a", True, None, LIVE, (), ("b", "c"), Decision(Move.HAND_OVER, barred=True)),
    ("a", False, None, LIVE, (), ("b", "c"), Decision(Move.WAIT, barred=True)),
    ("b", False, None, LIVE, (), ("b", "c"), Decision(Move.ACQUIRE)),
    # a wish for a node it does not allow is void, so is a preference for one
    ("b", True, "a", LIVE, (), ("b", "c"), Decision(Move.RENEW)),
    ("b", True, None, LIVE, ("a",), ("b", "c"), Decision(Move.RENEW)),
    # prefer keeps its meaning among the allowed nodes
    ("b", True, None, LIVE, ("c",), ("b", "c"), Decision(Move.HAND_OVER)),
    # glob patterns
    ("web-1", False, None, {"web-1", "db-1"}, (), ("web-*",), Decision(Move.ACQUIRE)),
    ("db-1", False, None, {"web-1", "db-1"}, (), ("web-*",), Decision(Move.WAIT, barred=True)),
]


@pytest.mark.parametrize("row", ELIGIBLE)
def test_decide_with_nodes(
    row: tuple[str, bool, str | None, set[str], tuple[str, ...], tuple[str, ...], Decision],
) -> None:
    node, held, wanted, live, prefer, nodes, expected = row
    assert decide(node, held, wanted, live, prefer, nodes) == expected


@pytest.mark.parametrize("nodes", [("a", "b"), ("c",), ("?",)])
@pytest.mark.parametrize("wanted", [None, "a", "c"])
@pytest.mark.parametrize("prefer", [(), ("a",), ("b",)])
def test_with_nodes_exactly_one_allowed_live_node_may_end_up_holding_it(
    nodes: tuple[str, ...], wanted: str | None, prefer: tuple[str, ...]
) -> None:
    for holder in sorted(LIVE):
        after = {n: decide(n, n == holder, wanted, LIVE, prefer, nodes).move for n in sorted(LIVE)}
        keeps = [n for n, m in after.items() if m is Move.RENEW]
        takers = [n for n, m in after.items() if m is Move.ACQUIRE]
        assert all(allowed(n, nodes) for n in keeps + takers)
        assert len(keeps) <= 1 and len(keeps) + len(takers) >= 1, (holder, after)


@pytest.mark.parametrize("row", ROWS)
def test_decide(row: Row) -> None:
    node, held, wanted, live, prefer, expected = row
    assert decide(node, held, wanted, live, prefer) == expected


@pytest.mark.parametrize("wanted", [None, "a", "b", "c", "z"])
@pytest.mark.parametrize("prefer", [(), ("a",), ("b",), ("a", "b"), ("z",)])
def test_exactly_one_live_node_may_end_up_holding_it(wanted: str | None, prefer: tuple[str, ...]) -> None:
    """Whoever holds it now, once the holder has acted, exactly one node would acquire or keep it: the singleton never
    ends up wanted by nobody (a deadlock) — the database's conditional insert picks one among several takers."""
    for holder in sorted(LIVE):
        after = {n: decide(n, n == holder, wanted, LIVE, prefer).move for n in sorted(LIVE)}
        keeps = [n for n, m in after.items() if m is Move.RENEW]
        takers = [n for n, m in after.items() if m is Move.ACQUIRE]
        assert len(keeps) + len(takers) >= 1, (holder, after)
        assert len(keeps) <= 1
        if keeps:
            assert takers == [] or after[holder] is Move.RENEW
        # after a hand-over, the next round has no holder: someone must be willing to take it
        if after[holder] is Move.HAND_OVER:
            nobody = {n: decide(n, False, wanted, LIVE, prefer).move for n in sorted(LIVE)}
            assert Move.ACQUIRE in nobody.values(), (holder, nobody)


def test_the_reason_names_where_it_goes() -> None:
    assert Decision(Move.HAND_OVER, "b").reason() == "handing over to b"
    assert Decision(Move.HAND_OVER).reason() == "handing over to a preferred node"
    assert Decision(Move.HAND_OVER, barred=True).reason() == "this node is not among its nodes"
