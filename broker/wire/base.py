"""`Out`, the base of every response record, and `from_domain`, which builds one from the
domain object it describes (so no handler copies fields one by one)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict


class Out(BaseModel):
    """Base of every response record: frozen, no unknown keys, readable from attributes."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, from_attributes=True
    )


OutT = TypeVar("OutT", bound=Out)


class _Overlay:
    """The domain object's attributes, with the values only the server computes on top."""

    def __init__(self, source: object, computed: dict[str, Any]) -> None:
        self._source = source
        self._computed = computed

    def __getattr__(self, name: str) -> Any:
        if name in self._computed:
            return self._computed[name]
        return getattr(self._source, name)


def from_domain(model: type[OutT], source: object, **computed: Any) -> OutT:
    """A record read from `source`'s attributes of the same names (nested records too);
    `computed` gives the fields the domain object does not carry."""
    return model.model_validate(_Overlay(source, computed) if computed else source)
