"""The admin port against its own OpenAPI document (schemathesis): no server error for any request the document
allows, and every response conforming to the document — status, content type, headers and body."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from requests.structures import CaseInsensitiveDict
from schemathesis.core.failures import FailureGroup
from schemathesis.core.transport import Response

from mcp_supervisor.admin.openapi import OPENAPI
from mcp_supervisor.testing.daemon import TOKEN, Daemon

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
command = ["sh", "-c", "echo b started; echo b ready; exec sleep 1000"]
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
@pytest.mark.timeout(120)
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_response_conforms_and_none_is_a_server_error(daemon: Daemon, case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(base_url=f"http://{daemon.admin}", timeout=1)  # a followed stream is read for 1 s at most


VALID = {"path": "a", "node": "n1", "instances": "1", "action": "restart", "signal": "HUP"}
"""A valid value of each required parameter, so that a request is wrong in the one parameter under test only."""


def out_of_range(schema: dict[str, Any]) -> str | None:
    """A value the schema forbids, as a query or path string (None: every string is allowed)."""
    if "enum" in schema:
        return "bogus"
    if schema.get("type") == "boolean":
        return "maybe"
    if schema.get("type") == "integer":
        return str(schema["maximum"] + 1) if "maximum" in schema else "-1"
    if "pattern" in schema:
        return "not an id"
    return None


CASES = [
    (path, method, p["name"], bad)
    for path, item in OPENAPI["paths"].items()
    for method, op in item.items()
    for p in op.get("parameters", [])
    if (bad := out_of_range(p["schema"])) is not None
]


@pytest.mark.parametrize(("path", "method", "name", "bad"), CASES, ids=[f"{m} {p} {n}" for p, m, n, _ in CASES])
def test_every_declared_enum_and_bound_is_enforced(daemon: Daemon, path: str, method: str, name: str, bad: str) -> None:
    op = OPENAPI["paths"][path][method]
    url, query = path, []
    for p in op["parameters"]:
        value = bad if p["name"] == name else VALID.get(p["name"]) if p.get("required") else None
        if value is None:
            continue
        if p["in"] == "path":
            url = url.replace("{" + p["name"] + "}", value)
        else:
            query.append(f"{p['name']}={value.replace(' ', '%20')}")
    code, body, _ = daemon.request(method.upper(), url + ("?" + "&".join(query) if query else ""))
    assert code == 400, (url, query, code, body)
    assert isinstance(body, dict) and (name in body["error"] or "unknown action" in body["error"]), body


def test_the_port_bounds_instances_as_the_config_does() -> None:
    from mcp_supervisor.admin.server import MAX_INSTANCES
    from mcp_supervisor.config.model import MAX_INSTANCES as CONFIG_MAX

    assert MAX_INSTANCES == CONFIG_MAX


@pytest.mark.parametrize(
    ("path", "query"),
    [("/events", {"follow": "1", "last_event_id": "0"}), ("/children/{path}/logs", {"follow": "1", "lines": "5"})],
)
def test_followed_streams_conform_event_by_event(daemon: Daemon, path: str, query: dict[str, str]) -> None:
    """schemathesis reads a stream until enough events came (it never ends) and checks each against the document's
    itemSchema; a frame that breaks it is caught (the check can fail)."""
    daemon.request("POST", "/children/sub/b/restart")  # events and a few lines to stream
    case = schema[path]["GET"].Case(path_parameters={"path": "sub"} if "{path}" in path else None, query=query)
    response = case.call(base_url=f"http://{daemon.admin}", timeout=2)
    assert response.headers["content-type"] == ["text/event-stream"] and response.content.count(b"\ndata: ") >= 3
    case.validate_response(response)
    broken = Response(status_code=200, headers=response.headers, content=b"id: 1\nevent: line\ndata: not json\n\n",
                      request=response.request, elapsed=0.1, message="OK", encoding="utf-8", http_version="1.1",
                      verify=False)  # fmt: skip
    with pytest.raises(FailureGroup, match="SSE event violates schema"):
        case.validate_response(broken)
