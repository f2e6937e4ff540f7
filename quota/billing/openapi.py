"""The OpenAPI 3.1 document, generated from the route table and the wire messages.

Invariant: each schema is msgspec's own JSON Schema of the message types that
`quota.contract.wire.parse` decodes with, so it says exactly what is accepted:
the same fields, the same required set, integers 0..2**62 (or signed), enums for
roles, kinds and states (inlined, typed string), `additionalProperties: false`.
A test checks every request and answer the app gives against the document.
"""

from __future__ import annotations

import enum
import functools
from typing import Any

import msgspec

from quota.billing.handlers import MAX_ID, MAX_TUNNEL
from quota.billing.routes import ROUTES
from quota.contract import wire

ERROR_STATUSES = {
    "400": "the request breaks this document (the message names the field)",
    "401": "missing or unknown token",
    "402": "the balance cannot cover the charge; nothing changed",
    "403": "wrong token kind, or the account is frozen",
    "404": "no such id (or not yours)",
    "405": "the path does not take this method; the Allow header names those it does",
    "409": "conflict: an idempotency key, payment id or relay seq reused for another request,"
    " the wrong state, or a balance or counter that would pass its maximum (2**62)",
    "413": "the request body is above 256 KiB (8 MiB for /v1/sync)",
    "422": "the request matches this document but names an unknown plan or package, a blank"
    " name or a malformed SSH key",
    "429": "too many unknown tokens from this address; the Retry-After header says when to retry",
}
# Error answers that carry a header, each its own response component.
_HEADERS = {
    "405": ("MethodNotAllowed", "Allow", {"type": "string"}),
    "429": ("TooManyRequests", "Retry-After", {"type": "string", "pattern": "^[0-9]+$"}),
}
# Printable ASCII without a space at either end (HTTP strips those): the app's KEY_PATTERN.
_KEY = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]([ -~]*[!-~])?$"}
_NUMBER = {"type": "integer", "minimum": 0, "maximum": wire.MAX_INT}
_QUERY: dict[str, dict[str, Any]] = {
    "after": _NUMBER,
    "limit": {"type": "integer", "minimum": 0, "maximum": 1000},
    "since": _NUMBER,
    "until": _NUMBER,
    "agent_id": {"type": "string", "maxLength": MAX_ID},
    "kind": {"type": "string", "enum": list(wire.KINDS)},
    "tunnel_id": {"type": "string", "maxLength": MAX_TUNNEL},
}
REF = "#/components/schemas/{name}"
# msgspec sorts an enum's values; the document lists them in the order the domain declares
_ENUMS = {
    e.__name__: [m.value for m in e]
    for e in vars(wire).values()
    if isinstance(e, type) and issubclass(e, enum.Enum)
}


def _inline_enums(node: Any, enums: dict[str, Any]) -> Any:
    """Enums become plain string schemas in place: one `type`, the values, no $ref."""
    if isinstance(node, list):
        return [_inline_enums(item, enums) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref", "").rsplit("/", 1)[-1]
    if ref in enums:
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {"type": "string", "enum": enums[ref], **rest}
    out = {k: _inline_enums(v, enums) for k, v in node.items()}
    if "enum" in out and "type" not in out:
        out = {"type": "string", **out}
    return out


def _components(types: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """JSON Schema of `types` (as $refs) and of every message they use, from msgspec."""
    refs, components = msgspec.json.schema_components(types, ref_template=REF)
    enums = {name: _ENUMS[name] for name, c in components.items() if "enum" in c}
    messages = {name: c for name, c in components.items() if name not in enums}
    return _inline_enums(list(refs), enums), _inline_enums(messages, enums)


def _operation(route: Any, schemas: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        **({"description": route.description} if route.description else {}),
        "security": [{"bearer": []}],
        "x-token-kinds": sorted(route.auth),
        "parameters": [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in _path_params(route.path)
        ]
        + [{"name": q, "in": "query", "required": False, "schema": _QUERY[q]} for q in route.query],
        "responses": {
            str(route.status): {
                "description": "switching to WebSocket; each message is this schema"
                if route.websocket
                else "success",
                "content": {"application/json": {"schema": schemas[route.response]}},
            },
            **{code: _error_ref(code) for code in ERROR_STATUSES},
        },
    }
    if route.keyed:
        op["parameters"].append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": True,
                "schema": _KEY,
            }
        )
    if route.request is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas[route.request]}},
        }
    return op


def _error_ref(code: str) -> dict[str, str]:
    name = _HEADERS[code][0] if code in _HEADERS else "Error"
    return {"$ref": f"#/components/responses/{name}"}


def _error_responses(error_schema: dict[str, Any]) -> dict[str, Any]:
    """The shared error answer, and one per error status that carries a header."""
    content = {"application/json": {"schema": error_schema}}
    out: dict[str, Any] = {
        "Error": {
            "description": "; ".join(f"{k}: {v}" for k, v in ERROR_STATUSES.items()),
            "content": content,
        }
    }
    for code, (name, header, schema) in _HEADERS.items():
        out[name] = {
            "description": ERROR_STATUSES[code],
            "headers": {header: {"required": True, "schema": schema}},
            "content": content,
        }
    return out


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document of the billing API."""
    types = list(
        dict.fromkeys(
            [wire.ErrorBody]
            + [r.response for r in ROUTES]
            + [r.request for r in ROUTES if r.request is not None]
        )
    )
    refs, components = _components(types)
    schemas = dict(zip(types, refs, strict=True))
    paths: dict[str, Any] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    error_schema = schemas[wire.ErrorBody]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "quotarelay billing API",
            "version": "1",
            "description": "Money is integer millicoins (1 coin = 1000), traffic integer bytes, "
            "times integer milliseconds since the epoch.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": _error_responses(error_schema),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
