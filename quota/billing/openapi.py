"""The OpenAPI 3.1 document, generated from the route table and the wire dataclasses.

Invariant: each schema says exactly what `quota.core.wire.parse` accepts: the
same fields, the same required set, integers 0..2**62 (or signed), enums for
choice fields, `additionalProperties: false`. A test checks every answer the
app gives against the document.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from quota.billing.routes import ROUTES
from quota.core import wire

ERROR_STATUSES = {
    "400": "malformed request (the message names the field)",
    "401": "missing or unknown token",
    "402": "the balance cannot cover the charge; nothing changed",
    "403": "wrong token kind, or the account is frozen",
    "404": "no such id (or not yours)",
    "409": "conflict (idempotency key or payment id reused differently, wrong state)",
}


def _schema(tp: Any, meta: Any, components: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return {"anyOf": [_schema(inner, meta, components), {"type": "null"}]}
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "maxItems": 10_000, "items": _schema(item, meta, components)}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        low = -wire.MAX_INT if meta.get("signed") else 0
        return {"type": "integer", "minimum": low, "maximum": wire.MAX_INT}
    if tp is str:
        out: dict[str, Any] = {"type": "string", "maxLength": wire.MAX_STR}
        if meta.get("choices"):
            out["enum"] = list(meta["choices"])
        return out
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        name = tp.__name__
        if name not in components:
            components[name] = {}  # reserve first: no infinite recursion
            components[name] = _object(typing.cast(type[Any], tp), components)
        return {"$ref": f"#/components/schemas/{name}"}
    raise TypeError(f"no schema for {tp!r}")


def _object(cls: type[Any], components: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props = {}
    required = []
    for f in dataclasses.fields(cls):
        props[f.name] = _schema(hints[f.name], f.metadata, components)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    return {
        "type": "object",
        "description": (cls.__doc__ or "").split("\n")[0] if cls.__doc__ else cls.__name__,
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


def _operation(route: Any, components: dict[str, Any]) -> dict[str, Any]:
    error = {"$ref": "#/components/responses/Error"}
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
        + [
            {"name": q, "in": "query", "required": False, "schema": {"type": "string"}}
            for q in route.query
        ],
        "responses": {
            str(route.status): {
                "description": "switching to WebSocket; each message is this schema"
                if route.websocket
                else "success",
                "content": {
                    "application/json": {"schema": _schema(route.response, {}, components)}
                },
            },
            **{code: error for code in ERROR_STATUSES},
        },
    }
    if route.keyed:
        op["parameters"].append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "maxLength": 200},
            }
        )
    if route.request is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema(route.request, {}, components)}},
        }
    return op


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document of the billing API."""
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    error_schema = _schema(wire.ErrorBody, {}, components)
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
            "responses": {
                "Error": {
                    "description": "; ".join(f"{k}: {v}" for k, v in ERROR_STATUSES.items()),
                    "content": {"application/json": {"schema": error_schema}},
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
