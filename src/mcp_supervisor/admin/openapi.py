"""The admin API described as OpenAPI 3.2 (served at GET /openapi.json).

Every status an operation can answer is listed, with its body's schema, and every parameter's enum and bounds are
enforced by the port (400 outside them): the test suite runs schemathesis against this document and the live port,
and any undocumented status, content type or body shape fails it. Streams (``text/event-stream``) describe one
event with ``itemSchema`` (OpenAPI 3.2), which schemathesis checks event by event.
"""

from __future__ import annotations

import signal
from typing import Any

from ..core import Cause

CAUSES = [str(c) for c in Cause]
_CRASH_LOOP = {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/CrashLoop"}]}


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
_EVENT_ID = {
    "type": "string",
    "pattern": "^([0-9a-f]+-)?[0-9]{1,12}$",
    "description": "an id the port gave out: <boot>-<number> (a bare number: of this incarnation)",
}


def _sse(events: list[str] | None) -> dict[str, Any]:
    """One Server-Sent Event as schemathesis parses it: its ``event`` name (``events`` or ``gap``; None: any event
    type, whose name is the ``type`` of its data), ``id`` and ``data`` (JSON text)."""
    return {
        "itemSchema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "event": {"enum": [*events, "gap"]} if events is not None else {"type": "string"},
                "id": {"type": "string"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "pattern": "^\\{.*\\}$",
                    "description": "one JSON object: an event, a line, or a gap {missed, restarted}",
                },
            },
        }
    }


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


SIGNALS: dict[str, int] = {
    **{n: int(s) for s in signal.Signals if s.name.startswith("SIG") and not s.name.startswith("SIG_")
       for n in (s.name, s.name[3:])},
    **{str(int(s)): int(s) for s in signal.Signals},
}  # fmt: skip
"""What a signal may be called in ``POST /children/{path}/signal?signal=``: its name, with or without ``SIG``, or
its number."""


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **_ANY}, **extra}


# fmt: off
OPENAPI: dict[str, Any] = {
    "openapi": "3.2.0",
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
                    "isolated": {"type": "boolean", "description": "an isolated supervisor's process (isolation = "
                                 "\"process\"): its children are its subtree's, as its process last wrote them"},
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
                                    "cause": {"enum": ["", *CAUSES]},
                                },
                            },
                        ]
                    },
                    "pid": {"type": ["integer", "null"]},
                    "exits": {"type": "object", "additionalProperties": {"type": "integer"},
                              "description": "ends by cause over the child's life"},
                    "crash_loop": _CRASH_LOOP,
                    "resources": {"oneOf": [{"type": "null"}, {
                        "type": "object",
                        "required": ["cpu_s", "rss_bytes", "peak_rss_bytes", "fds", "threads", "processes"],
                        "properties": {"cpu_s": {"type": "number"}, "rss_bytes": {"type": "integer"},
                                       "peak_rss_bytes": {"type": "integer"}, "fds": {"type": ["integer", "null"]},
                                       "threads": {"type": "integer"}, "processes": {"type": "integer"},
                                       "rss_history": {"type": "array", "items": {"type": "integer"}}},
                        "description": "processes: what its process group (and detached descendants) use now"}]},
                    "detached_pids": {"type": "array", "items": {"type": "integer"},
                                      "description": "descendants that left its process group (setsid, as "
                                                     "PostgreSQL's workers do): stopped with it"},
                    "next_restart_at": {"type": "number"},
                    "strategy": {"type": "string"},
                    "fleet": {"type": "boolean", "description": "the root only: true in fleet mode (GET /cluster)"},
                    "alerts": {"type": "array", "items": {"$ref": "#/components/schemas/AlertReceiver"},
                               "description": "the root only: the alert receivers (GET /alerts)"},
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
            "Event": {
                "type": "object",
                "required": ["type", "id"],
                "properties": {"type": {"type": "string"}, "id": _EVENT_ID, "path": {"type": "string"},
                               "at": {"type": "number"}},
            },
            "Line": {
                "type": "object",
                "required": ["seq", "at", "stream", "pid", "text", "path"],
                "properties": {"seq": {"type": "integer"}, "at": {"type": "number"}, "stream": {"type": "string"},
                               "pid": {"type": ["integer", "null"]}, "text": {"type": "string"},
                               "path": {"type": "string"}},
            },
            "CrashLoop": {
                "type": "object",
                "required": ["since", "count", "cause", "line"],
                "properties": {"since": {"type": "number"}, "count": {"type": "integer"},
                               "cause": {"enum": CAUSES}, "line": {"type": "string"}},
            },
            "AlertReceiver": {
                "type": "object",
                "required": ["name", "receiver", "on", "paths", "format", "sent", "failed", "dropped", "queued", "up",
                             "last_ok", "last_error", "last_error_at"],
                "properties": {
                    "name": {"type": "string"},
                    "receiver": {"type": "string", "description": "a webhook's scheme and host (its path is a "
                                                                  "secret), or the command"},
                    "on": {"type": "array", "items": {"type": "string"}},
                    "paths": {"type": "array", "items": {"type": "string"}},
                    "format": {"enum": [None, "json", "slack", "discord", "ntfy"]},
                    "sent": {"type": "integer"}, "failed": {"type": "integer"}, "dropped": {"type": "integer"},
                    "queued": {"type": "integer"}, "up": {"type": ["boolean", "null"]},
                    "last_ok": {"type": ["number", "null"]}, "last_error": {"type": ["string", "null"]},
                    "last_error_at": {"type": ["number", "null"]},
                },
            },
            "ExitRecord": {
                "type": "object",
                "required": ["pid", "started_at", "ready_at", "ended_at", "runtime_s", "reason", "detail", "cause",
                             "exit_code", "signal", "core_dumped", "ended_by", "certainty", "peak_rss_bytes",
                             "cpu_s", "last_lines"],
                "properties": {
                    "pid": {"type": ["integer", "null"]}, "started_at": {"type": "number"},
                    "ready_at": {"type": ["number", "null"]}, "ended_at": {"type": "number"},
                    "runtime_s": {"type": "number"}, "reason": {"enum": ["normal", "shutdown", "abnormal"]},
                    "detail": {"type": "string"}, "cause": {"enum": CAUSES},
                    "exit_code": {"type": ["integer", "null"]}, "signal": {"type": ["string", "null"]},
                    "core_dumped": {"type": "boolean"}, "ended_by": {"type": ["string", "null"]},
                    "certainty": {"enum": [None, "certain", "likely", "possible"]},
                    "peak_rss_bytes": {"type": ["integer", "null"]}, "cpu_s": {"type": ["number", "null"]},
                    "last_lines": {"type": "array", "items": {"type": "string"}},
                },
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
            "restart, stop or start the child at path (e.g. edge/proxy; a supervisor acts on its subtree)",
            {
                "200": _json({"type": "object", "required": ["path", "action", "child"], "properties": {
                    "path": {"type": "string"}, "action": {"enum": ["restart", "stop", "start"]},
                    "previous_pid": {"type": ["integer", "null"], "description": "its pid before the action"},
                    "child": {"type": ["object", "null"]}}}, "done"),
                "400": _err("an unknown action, or rolling not true/false (1/0, yes/no)"),
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
                {"name": "rolling", "in": "query", "required": False, "schema": {"type": "boolean"},
                 "description": "restart only: replace a replicated child's instances one at a time, each ready "
                                "before the next old one stops; 409 names the instance that failed"},
            ],
        )},
        "/children/{path}/exits": {"get": _op(
            "why the child ended, incarnation by incarnation: its exit history (the last 20), its crash-loop "
            "episode, and a one-line diagnosis",
            {
                "200": _json({"type": "object", "required": ["path", "diagnosis", "crash_loop", "exits"],
                              "properties": {
                                  "path": {"type": "string"}, "diagnosis": {"type": "string"},
                                  "crash_loop": _CRASH_LOOP,
                                  "exits": {"type": "array", "items": {"$ref": "#/components/schemas/ExitRecord"}},
                                  "loop_blocked": {"oneOf": [{"type": "null"}, {
                                      "type": "object", "required": ["count", "total_s", "last_at", "last_s", "frames"],
                                      "properties": {"count": {"type": "integer"}, "total_s": {"type": "number"},
                                                     "last_at": {"type": "number"}, "last_s": {"type": "number"},
                                                     "frames": {"type": "array", "items": {"type": "string"}}},
                                      "description": "an in-process worker that blocked the event loop"}]}}},
                             "the history, oldest first"),
                "404": _err("no child at that path"),
            },
            parameters=[{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
        )},
        "/children/{path}/signal": {"post": _op(
            "send a signal to the OS child at path (supervisorctl's signal): a program that reloads on SIGHUP, "
            "rotates its logs on SIGUSR1, ...; a death it causes is an abnormal exit (restarted as any crash)",
            {
                "200": _json({"type": "object", "required": ["path", "action", "signal", "pid", "group"],
                              "properties": {"path": {"type": "string"}, "action": {"const": "signal"},
                                             "signal": {"type": "string"}, "pid": {"type": "integer"},
                                             "group": {"type": "boolean"}}}, "sent"),
                "400": _err("not a signal name or number"),
                "404": _err("no child at that path"),
                "409": _err("not a running OS process"),
                **_AUTH,
            },
            security=[{"bearer": []}],
            parameters=[
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "signal", "in": "query", "required": True,
                 "schema": {"enum": sorted(SIGNALS, key=lambda n: (n.isdigit(), len(n), n))},
                 "description": "a name, with or without SIG (HUP, SIGHUP, USR1), or a number"},
                {"name": "group", "in": "query", "schema": {"type": "boolean"},
                 "description": "to the child's whole process group, not only its process"},
            ],
        )},
        "/cluster": {"get": _op(
            "the fleet as this node last read it: nodes with heartbeat and liveness, singletons with holder and token",
            {
                "200": _json({"type": "object", "required": ["node", "connected", "nodes", "singletons"],
                              "properties": {"node": {"type": "string"}, "connected": {"type": "boolean"},
                                             "error": {"type": ["string", "null"]},
                                             "conflict": {"type": ["string", "null"], "description": "another live "
                                                          "daemon uses this node's name: it holds nothing"},
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
                "400": _err("path or node missing, or a node the singleton's nodes do not allow"),
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
        "/alerts": {"get": _op(
            "The alert receivers ([[daemon.alerts]]) and how they fare, and the paths crash-looping now",
            {"200": _json({"type": "object", "required": ["receivers", "crash_looping"], "properties": {
                "receivers": {"type": "array", "items": {"$ref": "#/components/schemas/AlertReceiver"}},
                "crash_looping": {"type": "array", "items": {"type": "string"}}}}, "receivers"),
             "404": _err("alerts are not part of this admin port")},
        )},
        "/alerts/{name}/test": {"post": _op(
            "send the receiver a test alert now (no retries)",
            {
                "200": _json({"type": "object", "required": ["name", "sent"],
                              "properties": {"name": {"type": "string"}, "sent": {"const": True}}}, "taken"),
                "404": _err("no receiver of that name"),
                "502": _json({"type": "object", "required": ["name", "sent", "error"],
                              "properties": {"name": {"type": "string"}, "sent": {"const": False},
                                             "error": {"type": "string"}}}, "the receiver did not take it"),
                **_AUTH,
            },
            security=[{"bearer": []}],
            parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        )},
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"}, "OpenAPI")})},
        "/events": {"get": _op(
            "Recent events as JSON lines, or followed live as Server-Sent Events (follow=1 or Accept: "
            "text/event-stream); Last-Event-ID (which wins) or last_event_id resumes, a `gap` event says how many "
            "were missed, or that the daemon restarted since that id (this incarnation's backlog follows)",
            {
                "200": {"description": "events", "content": {
                    "application/x-ndjson": {"itemSchema": {"$ref": "#/components/schemas/Event"}},
                    "text/event-stream": _sse(None)}},
                "429": _err("too many streams open"),
                "503": _err("the daemon keeps no journal"),
            },
            parameters=[
                {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                {"name": "last_event_id", "in": "query", "schema": _EVENT_ID},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 10_000}},
                {"name": "path", "in": "query", "schema": {"type": "string"},
                 "description": "only events of this child and below (repeatable)"},
                {"name": "type", "in": "query", "schema": {"type": "string"},
                 "description": "only events of this type, e.g. ChildExited (repeatable)"},
                {"name": "exclude_type", "in": "query", "schema": {"type": "string"},
                 "description": "not events of this type, e.g. ProcessOutput (repeatable)"},
            ],
        )},
        "/children/{path}/logs": {"get": _op(
            "A child's recent output (stdout, stderr, its own log lines): JSON lines, text/plain when asked "
            "(Accept or format=text), or followed live as Server-Sent Events (follow=1). A supervisor's path gives "
            "the lines of every child below it, merged in the order they were written.",
            {
                "200": {"description": "lines", "content": {
                    "application/x-ndjson": {"itemSchema": {"$ref": "#/components/schemas/Line"}},
                    "text/plain": {"schema": {"type": "string"}},
                    "text/event-stream": _sse(["line"])}},
                "404": _err("no child at that path and no output kept for it"),
                "429": _err("too many streams open"),
                "503": _err("the daemon keeps no journal"),
            },
            parameters=[
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "lines", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 100_000}},
                {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                {"name": "last_event_id", "in": "query", "schema": _EVENT_ID},
                {"name": "format", "in": "query", "schema": {"enum": ["json", "text"]}},
            ],
        )},
        "/": {"get": _op("The web observer's address", {
            "302": {"description": "to /ui/", "headers": {"Location": {"schema": {"const": "/ui/"}}}}})},
        "/ui/": {"get": _op("The web observer (HTML; /ui/app.js and /ui/app.css beside it)", {
            "200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}})},
    },
}
# fmt: on
