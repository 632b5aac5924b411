"""`broker config`: validate a configuration file and show what it resolves to."""

from __future__ import annotations

from pathlib import Path

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, state
from broker.config.loader import config_path, load_settings

app = typer.Typer(help="The broker's configuration file.", no_args_is_help=True)


@app.command()
def check(
    ctx: typer.Context,
    file: Path | None = typer.Argument(
        None, help="File to check (default: the active configuration)."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Validate a configuration file and print the settings it resolves to (derived paths included)."""
    path = file or config_path(state(ctx).config)
    settings = load_settings(path)
    resolved = settings.model_dump(mode="json")
    resolved["derived"] = {
        "db_path": str(settings.db_path),
        "store": settings.store_url.display(),
        "checkpoint_log": str(settings.checkpoint_log),
        "signing_key": str(settings.signing_key),
        "ssh_key": str(settings.ssh_key),
        "known_hosts": str(settings.known_hosts),
    }
    if json_out:
        output.print_json({"file": str(path), "valid": True, "settings": resolved})
        return
    output.say(f"{path}: valid")
    rows: list[list[object]] = []
    for section, values in resolved.items():
        if isinstance(values, dict):
            rows.extend([f"{section}.{key}", value] for key, value in values.items())
        else:
            rows.append([section, values])
    output.table(None, ["key", "value"], rows)
