"""Fixtures and collection rules shared by every test; helpers live in tests/helpers.py."""

from __future__ import annotations

import signal

import pytest

from tests.stack_helpers import stack_env  # noqa: F401 - a fixture for the local-stack tests

# Launched as a shell's background job, the suite starts with SIGINT ignored, and every child would inherit that: the
# tests that press Ctrl-C on a `ctl ... -f` would wait forever. Children of a process that handles it get the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SERVER_FIXTURES = frozenset(
    {"pg_server", "pg", "redis_server", "rds", "moto_server", "s3", "bao_server", "bao", "stack_env"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a real server's fixture is a ``servers`` test, wherever it lives. Tests that declare a long
    timeout go first, so that under ``-n`` they run side by side from the start instead of one of them ending the
    run alone (a stable sort: everything else keeps its order)."""
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)
    items.sort(key=lambda item: -_declared_timeout(item))


def _declared_timeout(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    return float(marker.args[0]) if marker is not None and marker.args else 0.0
