"""The throwaway broker a store-level benchmark runs against: its own state directory, no
syslog, initialised like `broker init` (one place, so every benchmark measures the same
store settings)."""

from __future__ import annotations

from pathlib import Path

from broker.app import App
from broker.config.loader import settings_from_dict


def make_app(root: Path) -> App:
    """A broker whose state lives under `root`, its store migrated and its keys made."""
    settings = settings_from_dict(
        {
            "broker": {"state_dir": str(root / "state"), "service_user": "root"},
            "audit": {"syslog": False},
        },
        source="bench",
    )
    app = App(settings)
    app.setup().init("unix:bench")
    return app
