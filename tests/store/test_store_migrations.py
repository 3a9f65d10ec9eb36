"""The schema comes only from Alembic: migrations and models agree on both dialects, and
``open_store`` refuses databases that are not at the revision this code needs."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from trainwarden.supervisor.errors import StoreError
from trainwarden.supervisor.store.engine import make_engine
from trainwarden.supervisor.store.migrate import current, downgrade, head_revision, upgrade
from trainwarden.supervisor.store.schema import Base
from trainwarden.supervisor.store.store import open_store

TABLES = {
    "nodes",
    "runs",
    "run_attempts",
    "checkpoints",
    "conditions",
    "events",
    "actions",
    "incidents",
    "leader_lease",
    "alembic_version",
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def migrated_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        path: Path = request.getfixturevalue("sqlite_template")
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_migrated")
    return url


def test_models_and_migrations_agree(migrated_url: str) -> None:
    """`alembic check`: autogenerating from the migrated database finds nothing to do."""
    engine = make_engine(migrated_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
            names = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert diff == []
    assert names == TABLES


def test_upgrade_downgrade_round_trip_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    assert current(url) is None
    assert not (tmp_path / "tw.db").exists()  # asking does not create the file
    assert upgrade(url) == head_revision()
    assert upgrade(url) == head_revision()  # idempotent
    assert downgrade(url, "base") is None
    engine = create_engine(url)
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == {"alembic_version"}
    engine.dispose()
    assert upgrade(url) == head_revision()


@pytest.mark.integration
def test_upgrade_downgrade_round_trip_on_postgresql(fresh_pg_url: str) -> None:
    pg_url = fresh_pg_url
    with pytest.raises(StoreError, match=r"revision none \(empty\)"):
        open_store(pg_url)
    assert upgrade(pg_url) == head_revision()
    assert downgrade(pg_url, "base") is None
    with pytest.raises(StoreError, match=r"revision none .* run `trainwarden db upgrade`"):
        open_store(pg_url)
    assert upgrade(pg_url) == head_revision()
    open_store(pg_url).close()


def test_open_store_refuses_an_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "tw.db"
    url = f"sqlite:///{path}"
    with pytest.raises(StoreError, match="does not exist: run `trainwarden db upgrade`"):
        open_store(url)
    assert not path.exists()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("create table unrelated (x int)"))
    engine.dispose()
    with pytest.raises(StoreError) as err:
        open_store(url)
    assert str(err.value) == (
        f"sqlite:///{path}: database schema is at revision none (empty), this trainwarden "
        f"needs {head_revision()}: run `trainwarden db upgrade`"
    )


def test_open_store_refuses_a_database_from_a_newer_trainwarden(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("update alembic_version set version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError, match=r"revision 9999, unknown to this trainwarden"):
        open_store(url)
    with pytest.raises(StoreError, match="9999"):
        upgrade(url)


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    engine.dispose()
