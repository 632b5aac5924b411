from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.app import App, local_actor
from broker.config.loader import load_settings
from tests.helpers import run_broker, serving, write_config
from tests.pgcluster import Cluster, cluster


@pytest.fixture
def broker_config(tmp_path: Path) -> Path:
    """An initialised broker (state dir, keys, schema) in a temporary directory."""
    config = write_config(tmp_path)
    result = run_broker("init", config=config)
    assert result.returncode == 0, result.stderr
    return config


@pytest.fixture
def daemon(broker_config: Path) -> Iterator[Path]:
    """`broker serve` running for `broker_config` (its socket is under the tmp dir); the config."""
    with serving(broker_config):
        yield broker_config


@pytest.fixture
def broker_app(broker_config: Path) -> Iterator[App]:
    app = App(load_settings(broker_config))
    app.setup().migrate(local_actor())
    yield app
    app.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL 15 cluster per test process (tests/pgcluster.py)."""
    with cluster() as running:
        yield running


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_url(request: pytest.FixtureRequest) -> str | None:
    """`store.url` for each engine: None (the default SQLite file) or a fresh PG database."""
    if request.param == "sqlite":
        return None
    running: Cluster = request.getfixturevalue("pg_cluster")
    return running.database()
