"""The admin API described as OpenAPI 3.1 (served at GET /openapi.json).

Every status an operation can answer is listed, with its body's schema: the test suite runs schemathesis against
this document and the live port, and any undocumented status, content type or body shape fails it.
"""

from __future__ import annotations

from typing import Any


def _json(schema: dict[str, Any], description: str, media: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema}}}


_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _err(description: str) -> dict[str, Any]:
    return _json(_ERROR_REF, description)


# what any request can get: malformed, too slow, too large, or aimed at another host name (DNS rebinding)
_ANY = {
    "400": _err("a malformed request or query parameter"),
    "408": _err("the request body did not arrive in time"),
    "413": _err("the request body is over 16 KiB"),
    "421": _err("the Host header is not a loopback name"),
}
_AUTH = {
    "401": _err("no Authorization header"),
    "403": _err("wrong token, or mutations disabled (no admin_token_file)"),
}
_COUNT = {"type": "integer", "minimum": 0, "maximum": 999_999_999_999}
_PASS_FAIL = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": ["pass", "fail"]},
        "output": {"type": "string"},
        "cluster": {
            "type": "string",
            "description": "fleet mode: connected, or why the database is "
            "unreachable (singletons stopped, local children run)",
        },
    },
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **_ANY}, **extra}


# fmt: off
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "mcp-supervisor admin API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "status"],
                "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
            },
            "Node": {
                "type": "object",
                "required": ["id", "path", "kind", "state", "restarts", "uptime_s", "last_exit"],
                "properties": {
                    "id": {"type": "string"},
                    "path": {"type": "string"},
                    "kind": {"enum": ["supervisor", "worker", "process"]},
                    "state": {"enum": ["starting", "running", "restarting", "stopping", "stopped"]},
                    "restarts": {"type": "integer"},
                    "uptime_s": {"type": "number"},
                    "last_exit": {
                        "oneOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "required": ["reason", "detail", "at"],
                                "properties": {
                                    "reason": {"enum": ["normal", "shutdown", "abnormal"]},
                                    "detail": {"type": "string"},
                                    "at": {"type": ["number", "null"]},
                                },
                            },
                        ]
                    },
                    "pid": {"type": ["integer", "null"]},
                    "escaped_pids": {"type": "array", "items": {"type": "integer"},
                                     "description": "descendants that left the process group (setsid)"},
                    "next_restart_at": {"type": "number"},
                    "strategy": {"type": "string"},
                    "fleet": {"type": "boolean", "description": "the root only: true in fleet mode (GET /cluster)"},
                    "isolation": {"enum": ["cgroup", "process-group"],
                                  "description": "the root only: how OS children are contained and stopped (a "
                                                 "cgroup v2 each in a delegated subtree, else their process group)"},
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                },
            },
            "Health": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"enum": ["pass", "warn", "fail"]}, "checks": {"type": "object"}},
            },
            "Change": {
                "type": "object",
                "required": ["path", "change"],
                "properties": {"path": {"type": "string"}, "change": {"type": "string"}},
            },
        },
    },
    "paths": {
        "/status": {"get": _op("The supervision tree", {"200": _json({"$ref": "#/components/schemas/Node"}, "tree")})},
        "/livez": {"get": _op("Event loop and root supervisor alive", {
            "200": _json(_PASS_FAIL, "alive"), "503": _json(_PASS_FAIL, "not alive")})},
        "/readyz": {"get": _op("Ready: critical checks pass and not draining", {
            "200": _json(_PASS_FAIL, "ready"), "503": _json(_PASS_FAIL, "not ready")})},
        "/health": {"get": _op("application/health+json", {
            "200": _json({"$ref": "#/components/schemas/Health"}, "pass or warn", "application/health+json"),
            "503": _json({"$ref": "#/components/schemas/Health"}, "fail", "application/health+json")})},
        "/metrics": {"get": _op("Prometheus text exposition", {
            "200": _json({"type": "string"}, "metrics", "text/plain")})},
        "/children/{path}/{action}": {"post": _op(
            "restart, stop or start the child at path (e.g. edge/proxy)",
            {
                "200": _json({"type": "object", "required": ["path", "action", "child"], "properties": {
                    "path": {"type": "string"}, "action": {"enum": ["restart", "stop", "start"]},
                    "child": {"type": ["object", "null"]}}}, "done"),
                "400": _err("rolling is not 1/0 (or true/false)"),
                "404": _err("no child at that path"),
                "409": _err("not valid in the child's state, or its supervisor is stopping (or rolling with stop or "
                            "start); for a rolling restart, the result with the instance that failed"),
                **_AUTH,
            },
            security=[{"bearer": []}],
            parameters=[
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "action", "in": "path", "required": True,
                 "schema": {"enum": ["restart", "stop", "start"]}},
                {"name": "rolling", "in": "query", "required": False, "schema": {"enum": ["1", "0"]},
                 "description": "restart only: replace a replicated child's instances one at a time, each ready "
                                "before the next old one stops; 409 names the instance that failed"},
            ],
        )},
        "/cluster": {"get": _op(
            "the fleet as this node last read it: nodes with heartbeat and liveness, singletons with holder and token",
            {
                "200": _json({"type": "object", "required": ["node", "connected", "nodes", "singletons"],
                              "properties": {"node": {"type": "string"}, "connected": {"type": "boolean"},
                                             "error": {"type": ["string", "null"]},
                                             "read_at": {"type": ["number", "null"]},
                                             "nodes": {"type": "array", "items": {"type": "object"}},
                                             "singletons": {"type": "array", "items": {"type": "object"}}}},
                             "the fleet"),
                "404": _err("this node is not in a cluster"),
            },
        )},
        "/cluster/move": {"post": _op(
            "ask for the singleton at path to run on node: its holder hands it over at its next heartbeat",
            {
                "200": _json({"type": "object", "required": ["path", "node", "requested"],
                              "properties": {"path": {"type": "string"}, "node": {"type": "string"},
                                             "requested": {"type": "boolean"}}}, "requested"),
                "400": _err("path or node missing"),
                "404": _err("not in a cluster, or not a singleton"),
                "503": _err("the cluster database did not answer"),
                **_AUTH,
            },
            security=[{"bearer": []}],
            parameters=[
                {"name": "path", "in": "query", "required": True, "schema": {"type": "string"}},
                {"name": "node", "in": "query", "required": True, "schema": {"type": "string"}},
            ],
        )},
        "/children/{path}/scale": {"post": _op(
            "run N instances of the replicated child at path (until the next reload applies the file's)",
            {
                "200": _json({"type": "object", "required": ["path", "instances", "started", "stopped"],
                              "properties": {"path": {"type": "string"}, "instances": {"type": "integer"},
                                             "started": {"type": "array", "items": {"type": "string"}},
                                             "stopped": {"type": "array", "items": {"type": "string"}}}}, "done"),
                "400": _err("instances is not an integer 0..1024"),
                "404": _err("not a child with instances"),
                "409": _err("an instance failed to start, or the supervisor is stopping"),
                **_AUTH,
            },
            security=[{"bearer": []}],
            parameters=[
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "instances", "in": "query", "required": True,
                 "schema": {"type": "integer", "minimum": 0, "maximum": 1024}},
            ],
        )},
        "/reload": {"post": _op(
            "Re-read the config and apply the difference",
            {
                "200": _json({"type": "object", "required": ["ok", "changes"], "properties": {
                    "ok": {"const": True},
                    "changes": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}}}},
                    "applied: what changed"),
                "202": _json({"type": "object", "required": ["accepted"], "properties": {
                    "accepted": {"const": True}}}, "accepted (wait=false)"),
                "422": _json({"type": "object", "required": ["ok", "error"], "properties": {
                    "ok": {"const": False}, "error": {"type": "string"}, "changes": {"type": "array"}}},
                    "invalid config: nothing changed"),
                **_AUTH,
            },
            security=[{"bearer": []}],
            parameters=[{"name": "wait", "in": "query", "schema": {"type": "boolean", "default": True}}],
        )},
        "/health/check": {"post": _op(
            "Run a health round now",
            {
                "200": _json({"$ref": "#/components/schemas/Health"}, "the new snapshot", "application/health+json"),
                "404": _err("no health monitor is running"),
                **_AUTH,
            },
            security=[{"bearer": []}],
        )},
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"}, "OpenAPI")})},
        "/events": {"get": _op(
            "Recent events as JSON lines, or followed live as Server-Sent Events (follow=1 or Accept: "
            "text/event-stream); Last-Event-ID or last_event_id resumes, a `gap` event says how many were missed",
            {
                "200": {"description": "events", "content": {
                    "application/x-ndjson": {"schema": {"type": "string"}},
                    "text/event-stream": {"schema": {"type": "string"}}}},
                "429": _err("too many streams open"),
                "503": _err("the daemon keeps no journal"),
            },
            parameters=[
                {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                {"name": "last_event_id", "in": "query", "schema": _COUNT},
                {"name": "limit", "in": "query", "schema": _COUNT},
                {"name": "path", "in": "query", "schema": {"type": "string"},
                 "description": "only events of this child and below (repeatable)"},
            ],
        )},
        "/children/{path}/logs": {"get": _op(
            "A child's recent output (stdout, stderr, its own log lines): JSON lines, text/plain when asked "
            "(Accept or format=text), or followed live as Server-Sent Events (follow=1)",
            {
                "200": {"description": "lines", "content": {
                    "application/x-ndjson": {"schema": {"type": "string"}},
                    "text/plain": {"schema": {"type": "string"}},
                    "text/event-stream": {"schema": {"type": "string"}}}},
                "404": _err("no child at that path and no output kept for it"),
                "429": _err("too many streams open"),
                "503": _err("the daemon keeps no journal"),
            },
            parameters=[
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "lines", "in": "query", "schema": _COUNT},
                {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                {"name": "last_event_id", "in": "query", "schema": _COUNT},
                {"name": "format", "in": "query", "schema": {"enum": ["json", "text"]}},
            ],
        )},
        "/ui/": {"get": _op("The web observer (HTML; /ui/app.js and /ui/app.css beside it)", {
            "200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}})},
    },
}
# fmt: on
