"""Per-invocation state: where the configuration and the daemon are, built on demand.

Commands that read or change broker state go through `client()` (the daemon);
only bootstrap commands (`init`, `db migrate`, `serve`) build an App themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from broker.cli import output

if TYPE_CHECKING:  # imported where used: `broker --version` and Tab completion need none of it
    from broker.app import App  # heavy (directory, fleet, policy): only bootstrap commands need it
    from broker.client.client import Client
    from broker.config.settings import DaemonSection, Settings


@dataclass
class CliState:
    config: Path | None = None
    broker_url: str | None = None
    ca_file: Path | None = None
    no_headers: bool = False
    _app: App | None = field(default=None, repr=False)
    _client: Client | None = field(default=None, repr=False)

    def __setattr__(self, name: str, value: object) -> None:
        """--no-headers given after the subcommand reaches the output settings too."""
        super().__setattr__(name, value)
        if name == "no_headers" and value:
            output.hide_headers()

    def settings(self) -> Settings:
        from broker.config.loader import config_path, load_settings

        return load_settings(config_path(self.config))

    def app(self) -> App:
        if self._app is None:
            from broker.app import App  # lazy: CLI start-up (only bootstrap commands need it)
            from broker.config.kerberos import use_krb5_conf

            settings = self.settings()
            use_krb5_conf(settings.kerberos)  # this process's Kerberos, before the App runs
            self._app = App(settings)
        return self._app

    def client(self) -> Client:
        """The daemon(s) to ask: --broker / BROKER_URL (one URL or a comma-separated list),
        else the configuration's daemon.endpoints, else its daemon.socket."""
        if self._client is None:
            from broker.client.client import Client
            from broker.client.transport import Target, endpoint_targets

            url = self.broker_url or os.environ.get("BROKER_URL") or None
            if url is not None:
                self._client = Client(endpoint_targets(url.split(","), self.ca_file))
            else:
                daemon = self._daemon_section()
                if daemon.endpoints:
                    self._client = Client(endpoint_targets(list(daemon.endpoints), self.ca_file))
                else:
                    self._client = Client(Target(socket_path=daemon.socket))
        return self._client

    def _daemon_section(self) -> DaemonSection:
        """The daemon section of the configuration; the defaults when there is no file."""
        from broker.config.loader import DEFAULT_CONFIG, ENV_VAR, config_path
        from broker.config.settings import DaemonSection

        path = config_path(self.config)
        explicit = self.config is not None or os.environ.get(ENV_VAR)
        if not explicit and path == DEFAULT_CONFIG and not path.exists():
            return DaemonSection()
        return self.settings().daemon

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):
        raise RuntimeError("CLI state missing")
    return obj


def client(ctx: typer.Context) -> Client:
    return state(ctx).client()


def _json_or_env(value: bool) -> bool:
    """--json, or BROKER_FORMAT=json for every listing and show."""
    return value or output.json_requested()


JSON_OPTION = typer.Option(
    False,
    "--json",
    callback=_json_or_env,
    help="Print JSON instead of a table (also: BROKER_FORMAT=json).",
)
