"""Fixtures and collection rules shared by every test; helpers live in tests/helpers.py."""

from __future__ import annotations

import pytest

from tests.stack_helpers import stack_env  # noqa: F401 - a fixture for the local-stack tests

SERVER_FIXTURES = frozenset(
    {"pg_server", "pg", "redis_server", "rds", "moto_server", "s3", "bao_server", "bao", "stack_env"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a real server's fixture is a ``servers`` test, wherever it lives."""
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)
