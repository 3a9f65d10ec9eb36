"""Fixtures: the same store tests run on an SQLite file and on a throwaway PostgreSQL database.

PostgreSQL: one database ``tw_test_<random>`` per test session, created through an
AUTOCOMMIT connection to the ``test`` database, migrated once, emptied before every test
and dropped at the end. SQLite: a migrated template file copied for every test.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from trainwarden.supervisor.store.migrate import upgrade
from trainwarden.supervisor.store.store import Store, open_store

PG_ADMIN_URL = os.environ.get(
    "TRAINWARDEN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TABLES = (
    "events",
    "conditions",
    "nodes",
    "checkpoints",
    "run_attempts",
    "runs",
    "actions",
    "incidents",
    "leader_lease",
)


@contextmanager
def pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (no schema), dropped afterwards."""
    name = f"tw_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(
        PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - the service is down
        admin.dispose()
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is needed (make services): {exc}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The session's PostgreSQL database (shared; migrated by pg_migrated)."""
    with pg_database() as url:
        yield url


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, empty."""
    with pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_migrated(pg_url: str) -> str:
    upgrade(pg_url)
    return pg_url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "trainwarden.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each dialect."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "trainwarden.db"
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_migrated")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()
