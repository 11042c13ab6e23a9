"""The admin port against its own OpenAPI document (schemathesis): no server error for any request the document
allows, and every response conforming to the document — status, content type, headers and body."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from requests.structures import CaseInsensitiveDict

from mcp_supervisor.admin.openapi import OPENAPI
from tests.daemon_helpers import TOKEN, Daemon

pytestmark = pytest.mark.realtime

schema = schemathesis.openapi.from_dict(OPENAPI)


@schemathesis.auth()
class Token:
    """The admin token, known to schemathesis, so that it also tries requests without it (and expects 401)."""

    def get(self, case: schemathesis.Case[Any], context: object) -> str:
        return TOKEN

    def set(self, case: schemathesis.Case[Any], data: str, context: object) -> None:
        headers = CaseInsensitiveDict(case.headers or {})
        headers["Authorization"] = f"Bearer {data}"
        case.headers = headers


TREE = """
[tree]
intensity = 1000
[[tree.children]]
id = "a"
command = ["sleep", "1000"]
[[tree.children]]
id = "sub"
[[tree.children.children]]
id = "b"
command = ["sleep", "1000"]
[[tree.children]]
id = "health"
worker = "health"
config = { interval = 60 }
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("openapi"), TREE)
    d.wait_ready()
    yield d
    assert d.stop() == 0
    assert "Traceback" not in d.log_text()


def test_the_served_document_is_this_one(daemon: Daemon) -> None:
    code, doc, _ = daemon.request("GET", "/openapi.json")
    assert code == 200 and doc == OPENAPI


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_response_conforms_and_none_is_a_server_error(daemon: Daemon, case: schemathesis.Case[Any]) -> None:
    if case.query and "follow" in case.query:  # a followed stream never ends: tests/admin/test_streams.py covers it
        case.query = {**case.query, "follow": False}
    case.call_and_validate(base_url=f"http://{daemon.admin}")
