"""The admin API described as OpenAPI 3.1 (served at GET /openapi.json)."""

from __future__ import annotations

from typing import Any

_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_AUTH = {
    "401": {**_ERR, "description": "missing Authorization header"},
    "403": {**_ERR, "description": "wrong token, or mutations disabled (no admin_token_file)"},
}

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
                                "properties": {
                                    "reason": {"enum": ["normal", "shutdown", "abnormal"]},
                                    "detail": {"type": "string"},
                                    "at": {"type": "number"},
                                },
                            },
                        ]
                    },
                    "pid": {"type": ["integer", "null"]},
                    "escaped_pids": {"type": "array", "items": {"type": "integer"},
                                     "description": "descendants that left the process group (setsid)"},
                    "next_restart_at": {"type": "number"},
                    "strategy": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                },
            },
            "Health": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"enum": ["pass", "warn", "fail"]}, "checks": {"type": "object"}},
            },
        },
    },
    "paths": {
        "/status": {"get": {"summary": "The supervision tree", "responses": {"200": {
            "description": "tree",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}}}}},
        "/livez": {"get": {"summary": "Event loop and root supervisor alive",
                           "responses": {"200": {"description": "alive"}, "503": {"description": "not alive"}}}},
        "/readyz": {"get": {"summary": "Ready: critical checks pass and not draining",
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/health": {"get": {"summary": "application/health+json", "responses": {
            "200": {"description": "pass or warn",
                    "content": {"application/health+json": {"schema": {"$ref": "#/components/schemas/Health"}}}},
            "503": {"description": "fail"}}}},
        "/metrics": {"get": {"summary": "Prometheus text exposition", "responses": {"200": {
            "description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/children/{path}/{action}": {"post": {
            "summary": "restart, stop or start the child at path (e.g. edge/proxy)",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "action", "in": "path", "required": True,
                 "schema": {"enum": ["restart", "stop", "start"]}},
            ],
            "responses": {"200": {"description": "done"}, "404": {**_ERR, "description": "unknown path"},
                          "409": {**_ERR, "description": "not valid in the child's state"}, **_AUTH}}},
        "/reload": {"post": {
            "summary": "Re-read the config and apply the difference",
            "security": [{"bearer": []}],
            "parameters": [{"name": "wait", "in": "query", "schema": {"type": "boolean", "default": True}}],
            "responses": {"200": {"description": "applied: the changes"},
                          "202": {"description": "accepted (wait=false)"},
                          "422": {**_ERR, "description": "invalid config: nothing changed"}, **_AUTH}}},
        "/health/check": {"post": {
            "summary": "Run a health round now", "security": [{"bearer": []}],
            "responses": {"200": {"description": "the new snapshot"}, "404": _ERR, **_AUTH}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
    },
}  # fmt: skip
