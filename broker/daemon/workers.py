"""The daemon's per-thread Apps: each worker thread owns one App, and so one SQLite
connection; both listeners (server.py, tls.py) take theirs from here."""

from __future__ import annotations

import threading

from broker.app import App
from broker.config.settings import Settings


class Workers:
    """The per-thread Apps, built on first use and closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._apps: list[App] = []
        self._lock = threading.Lock()

    def app(self) -> App:
        app: App | None = getattr(self._local, "app", None)
        if app is None:
            app = App(self.settings)
            self._local.app = app
            with self._lock:
                self._apps.append(app)
        return app

    def close(self) -> None:
        with self._lock:
            for app in self._apps:
                app.close()
            self._apps.clear()
