"""Routes: method + path template -> handler, with the models that validate both ends.

Every route names its request model (query string or JSON body, extra keys
forbidden) and its response model, so the OpenAPI description in docs/ is
generated from the same objects that validate requests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict

from broker.daemon.caller import Access, Caller
from broker.wire.base import Out

if TYPE_CHECKING:
    from broker.app import App


class Body(BaseModel):
    """Base of every request model: unknown keys are refused, strings are not trimmed."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Empty(Body):
    """No parameters."""


RequestT = TypeVar("RequestT", bound=Body)


@dataclass(frozen=True)
class Context(Generic[RequestT]):
    """What a handler gets: the caller, the process's services, the validated request."""

    caller: Caller
    app: App
    params: RequestT
    now: datetime


Handler = Callable[[Context[Any]], Out | list[Any]]

_SEGMENT = re.compile(r"^(?:[a-z0-9-]+|\{[a-z_]+\})$")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    request: type[Body]
    response: Any  # a model class, or list[Model]
    access: Access
    summary: str
    mutating: bool
    # The audit action of a caller refused at the door (not a directory user): the routes
    # whose refusals are audited (audit/refusals.py); None for the others.
    refusal: str | None = None
    # The HTTP status of a successful answer, from the answer itself (health answers 503
    # when degraded, with the same record); None for 200 always.
    status: Callable[[Any], int] | None = None

    def match(self, parts: list[str]) -> dict[str, str] | None:
        template = self.path.strip("/").split("/")
        if len(template) != len(parts):
            return None
        found: dict[str, str] = {}
        for want, got in zip(template, parts, strict=True):
            if want.startswith("{"):
                found[want[1:-1]] = got  # still percent-encoded; decoded by path_value()
            elif want != got:
                return None
        return found


def path_value(raw: str) -> str:
    """A percent-decoded path parameter (UTF-8, strictly); its own model validates it next."""
    return unquote(raw, encoding="utf-8", errors="strict")


class Registry:
    """All routes of the API, filled by the modules in broker/daemon/api/."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self,
        method: str,
        path: str,
        *,
        request: type[Body] = Empty,
        response: Any,
        access: Access,
        summary: str,
        refusal: str | None = None,
        status: Callable[[Any], int] | None = None,
    ) -> Callable[[Callable[[Context[Any]], Any]], Callable[[Context[Any]], Any]]:
        segments = path.strip("/").split("/")
        if not all(_SEGMENT.fullmatch(s) for s in segments):
            raise ValueError(f"bad route path {path}")

        def register(handler: Callable[[Context[Any]], Any]) -> Callable[[Context[Any]], Any]:
            self.routes.append(
                Route(
                    method,
                    path,
                    handler,
                    request,
                    response,
                    access,
                    summary,
                    mutating=method != "GET",
                    refusal=refusal,
                    status=status,
                )
            )
            return handler

        return register

    def find(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """The route for method+path, its path parameters, and whether the path exists at all."""
        parts = path.strip("/").split("/")
        path_known = False
        for route in self.routes:
            params = route.match(parts)
            if params is None:
                continue
            path_known = True
            if route.method == method:
                return route, params, True
        return None, {}, path_known


REGISTRY = Registry()
