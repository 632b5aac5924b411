"""Per-invocation state: where the configuration is, and the App built from it on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import typer

from broker.app import App
from broker.config.loader import config_path, load_settings


@dataclass
class CliState:
    config: Path | None = None
    _app: App | None = field(default=None, repr=False)

    def app(self) -> App:
        if self._app is None:
            self._app = App(load_settings(config_path(self.config)))
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):
        raise RuntimeError("CLI state missing")
    return obj


JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of a table.")
