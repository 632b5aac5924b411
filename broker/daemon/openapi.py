"""The OpenAPI 3.1 description of the API, generated from the routes' own models.

docs/openapi.json is this output; a unit test fails when the two drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from broker import __version__
from broker.daemon import api  # noqa: F401 (registers the routes)
from broker.daemon.caller import Access
from broker.daemon.errors import STATUS
from broker.daemon.routing import REGISTRY, Empty, Route

_ACCESS_TEXT = {
    Access.ANYONE: "Any caller the daemon can identify.",
    Access.USER: "An enabled directory account (self-service).",
    Access.SELF_OR_OPERATOR: "A directory account about itself, or an operator.",
    Access.OPERATOR: "An operator: root, the daemon's service user, or daemon.operator_group.",
}

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["kind", "message", "fix"],
            "additionalProperties": False,
            "properties": {
                "kind": {"type": "string", "enum": sorted(STATUS)},
                "message": {"type": "string"},
                "fix": {"type": ["string", "null"]},
            },
        }
    },
}


def _models() -> list[type[BaseModel]]:
    seen: dict[str, type[BaseModel]] = {}
    for route in REGISTRY.routes:
        for model in (route.request, _item_model(route.response)):
            if model is not None and model is not Empty:
                seen[model.__name__] = model
    return list(seen.values())


def _item_model(response: Any) -> type[BaseModel] | None:
    args = getattr(response, "__args__", None)
    if args:
        return args[0] if isinstance(args[0], type) and issubclass(args[0], BaseModel) else None
    return response if isinstance(response, type) and issubclass(response, BaseModel) else None


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _response_schema(route: Route) -> dict[str, Any]:
    item = _item_model(route.response)
    assert item is not None
    if getattr(route.response, "__args__", None):
        return {"type": "array", "items": _ref(item)}
    return _ref(item)


def _parameters(route: Route, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    params = []
    fields = route.request.model_fields
    in_path = {p[1:-1] for p in route.path.split("/") if p.startswith("{")}
    for name, field in fields.items():
        where = "path" if name in in_path else "query"
        schema = TypeAdapter(Any if field.annotation is None else field.annotation).json_schema()
        params.append(
            {
                "name": name,
                "in": where,
                "required": where == "path" or field.is_required(),
                "schema": schema,
            }
        )
    del schemas
    return params


def document() -> dict[str, Any]:
    _, definitions = models_json_schema(
        [(m, "validation") for m in _models()], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    schemas["Error"] = _ERROR_SCHEMA
    paths: dict[str, Any] = {}
    for route in REGISTRY.routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "description": _ACCESS_TEXT[route.access],
            "operationId": f"{route.method.lower()}_{route.handler.__module__.rsplit('.', 1)[-1]}"
            f"_{route.handler.__name__}",
            "x-access": route.access.value,
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": _response_schema(route)}},
                },
                "default": {
                    "description": "Refused or failed; `kind` maps to the CLI's exit code",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                },
            },
        }
        if route.status is not None:
            operation["responses"]["503"] = {
                "description": "Degraded: the same record, naming each failed check",
                "content": {"application/json": {"schema": _response_schema(route)}},
            }
        if route.method == "GET" or route.request is Empty:
            params = _parameters(route, schemas)
            if params:
                operation["parameters"] = params
        else:
            path_params = [p for p in _parameters(route, schemas) if p["in"] == "path"]
            if path_params:
                operation["parameters"] = path_params
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(route.request)}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "HPC access broker daemon API",
            "version": __version__,
            "description": (
                "HTTP/JSON on the Unix socket daemon.socket (callers identified by "
                "SO_PEERCRED) and, when daemon.listen is set, on TLS with Kerberos "
                "(Negotiate). One request per connection; bodies at most daemon.max_body "
                "bytes; unknown fields are refused."
            ),
        },
        "servers": [{"url": "http://localhost", "description": "unix:/run/broker/broker.sock"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"negotiate": {"type": "http", "scheme": "negotiate"}},
        },
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=False) + "\n"
