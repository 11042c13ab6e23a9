"""What every service shares."""

from __future__ import annotations

import pytest

from mcp_supervisor.services.base import retry_connect


async def test_a_connect_failure_names_its_cause_even_when_the_error_has_no_message() -> None:
    async def connect() -> None:
        raise TimeoutError  # str() is "": the message used to end in an empty cause

    with pytest.raises(ConnectionError) as err:
        await retry_connect(connect, 2, 0.001, 0.001, "postgres x")
    assert str(err.value) == "postgres x: could not connect after 2 attempts: TimeoutError"
