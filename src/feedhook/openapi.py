"""The admin API described for programs: an OpenAPI 3.1 document, served at
/api/openapi.json. Its schemas are JSON Schema 2020-12, so the tests check the server's
real answers against them with a JSON Schema validator."""

from __future__ import annotations

from typing import Any

from feedhook import __version__
from feedhook.config import SOURCE_KINDS

_TIME = {"type": ["string", "null"], "format": "date-time"}
_STATE = {
    "type": "object",
    "required": ["state", "reason", "since", "until"],
    "properties": {
        "state": {"enum": ["active", "paused", "circuit_open", "disabled"]},
        "reason": {"type": ["string", "null"]},
        "since": _TIME,
        "until": _TIME,
    },
}
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Status": {
        "type": "object",
        "required": ["sources", "subscriptions"],
        "properties": {
            "sources": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["configured", "cursor", "last_poll_at", "last_error"],
                    "properties": {
                        "configured": {"type": "boolean"},
                        "cursor": {"type": ["string", "null"]},
                        "last_poll_at": _TIME,
                        "last_success_at": _TIME,
                        "last_error": {"type": ["string", "null"]},
                        "last_error_at": _TIME,
                        "kind": {"enum": list(SOURCE_KINDS)},
                        "polled_by": {"type": "string"},
                        "state": {"enum": ["starting", "ok", "retrying", "failing"]},
                        "cause": {"type": ["string", "null"]},
                        "newest_event_at": _TIME,
                        "events_ingested": {"type": "integer", "minimum": 0},
                    },
                },
            },
            "subscriptions": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["configured", "pending", "delivered", "dead", "state"],
                    "properties": {
                        "configured": {"type": "boolean"},
                        "url": {"type": "string"},
                        "pending": {"type": "integer", "minimum": 0},
                        "delivered": {"type": "integer", "minimum": 0},
                        "dead": {"type": "integer", "minimum": 0},
                        "state": _STATE,
                    },
                },
            },
            "replicas": {"type": "object", "additionalProperties": _TIME},
            "storage": {
                "type": "object",
                "properties": {
                    "events": {"type": "integer"},
                    "bytes": {"type": "integer"},
                    "free_bytes": {"type": "integer"},
                },
            },
        },
    },
    "DeadLetter": {
        "type": "object",
        "required": ["id", "subscription", "envelope_id", "type", "attempts", "reason"],
        "properties": {
            "id": {"type": "integer"},
            "subscription": {"type": "string"},
            "envelope_id": {"type": "string"},
            "type": {"type": "string"},
            "attempts": {"type": "integer"},
            "status_code": {"type": ["integer", "null"]},
            "reason": {"type": "string"},
            "response_body": {"type": ["string", "null"]},
            "failed_at": _TIME,
            "event": {"type": "object", "description": "the envelope (one dead letter only)"},
        },
    },
    "DeadLetterPage": {
        "type": "object",
        "required": ["dead_letters", "next_after"],
        "properties": {
            "dead_letters": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}},
            "next_after": {"type": ["integer", "null"]},
        },
    },
    "Trace": {
        "type": "object",
        "required": ["envelope_id", "source", "type", "ingested_at", "subscriptions", "event"],
        "properties": {
            "envelope_id": {"type": "string"},
            "source": {"type": "string"},
            "type": {"type": "string"},
            "ingested_at": _TIME,
            "event": {"type": "object"},
            "subscriptions": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["state", "next_attempt_at", "attempts"],
                    "properties": {
                        "state": {"enum": ["pending", "in_flight", "delivered", "dead"]},
                        "next_attempt_at": _TIME,
                        "attempts": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["at", "status_code", "outcome"],
                                "properties": {
                                    "at": _TIME,
                                    "status_code": {"type": ["integer", "null"]},
                                    "duration_ms": {"type": ["number", "null"]},
                                    "outcome": {"enum": ["delivered", "retry", "dead"]},
                                    "error": {"type": ["string", "null"]},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "Count": {
        "type": "object",
        "properties": {"replayed": {"type": "integer"}, "purged": {"type": "integer"}},
    },
    "SubscriptionChange": {
        "type": "object",
        "required": ["subscription", "state", "changed"],
        "properties": {
            "subscription": {"type": "string"},
            "state": {"enum": ["disabled", "enabled"]},
            "changed": {"type": "boolean"},
        },
    },
    "Reload": {
        "type": "object",
        "properties": {
            "reloaded": {"type": "boolean"},
            "changes": {"type": "array", "items": {"type": "string"}},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
    },
}


def _answer(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_ERRORS = {
    "400": _answer("Error", "bad input"),
    "401": _answer("Error", "missing or wrong token"),
    "404": _answer("Error", "no such thing"),
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "feedhook admin API", "version": __version__},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"token": []}],
        "paths": {
            "/api/status": {"get": {"responses": {"200": _answer("Status", "status")}}},
            "/api/dead-letters": {
                "get": {
                    "parameters": [
                        {"name": "subscription", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                        {"name": "after", "in": "query", "schema": {"type": "integer"}},
                    ],
                    "responses": {"200": _answer("DeadLetterPage", "a page"), **_ERRORS},
                }
            },
            "/api/dead-letters/replay": {
                "post": {"responses": {"200": _answer("Count", "how many were replayed")}}
            },
            "/api/dead-letters/{id}": {
                "get": {
                    "parameters": [_ID],
                    "responses": {"200": _answer("DeadLetter", "with its event"), **_ERRORS},
                },
                "delete": {
                    "parameters": [_ID],
                    "responses": {"200": _answer("Count", "purged"), **_ERRORS},
                },
            },
            "/api/dead-letters/{id}/replay": {
                "post": {
                    "parameters": [_ID],
                    "responses": {"200": _answer("Count", "replayed"), **_ERRORS},
                }
            },
            "/api/events/{envelope_id}": {
                "get": {
                    "parameters": [
                        {
                            "name": "envelope_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": _answer("Trace", "every attempt"), **_ERRORS},
                }
            },
            "/api/subscriptions/{name}/{action}": {
                "post": {
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "action",
                            "in": "path",
                            "required": True,
                            "schema": {"enum": ["disable", "enable"]},
                        },
                    ],
                    "responses": {"200": _answer("SubscriptionChange", "done"), **_ERRORS},
                }
            },
            "/api/reload": {
                "post": {
                    "responses": {
                        "200": _answer("Reload", "applied"),
                        "400": _answer("Reload", "rejected; the running config stays"),
                    }
                }
            },
        },
    }
