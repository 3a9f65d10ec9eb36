"""The store: one object the daemon and the CLI use for everything persistent.

:func:`open_store` checks the URL, that the database answers, and that its schema is at
the revision this code needs; it never creates or migrates anything (that is
``trainwarden db upgrade``), so a typo in a URL cannot leave an empty database behind.
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from trainwarden.supervisor.errors import StoreError
from trainwarden.supervisor.store.audit import ActionStore
from trainwarden.supervisor.store.cluster import StateStore
from trainwarden.supervisor.store.engine import (
    connect_error,
    make_engine,
    mask,
    parse_url,
    sqlite_path,
)
from trainwarden.supervisor.store.migrate import UPGRADE_HINT, revision_of, schema_problem
from trainwarden.supervisor.store.run_rows import RunStore


class Store(StateStore, RunStore, ActionStore):
    """Nodes, runs, attempts, checkpoints, conditions, events, actions, incidents, leases.

    Synchronous and thread-safe (a connection pool underneath); every method is one
    transaction. Records cross the API as frozen dataclasses, never ORM objects.
    """

    def __enter__(self) -> Store:
        return self


def open_store(raw_url: str, *, check_schema: bool = True) -> Store:
    """A store on ``raw_url``; StoreError with one clear sentence if it cannot be used."""
    url = parse_url(raw_url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise StoreError(
            f"database file {path} does not exist: {UPGRADE_HINT} --url '{mask(url)}' to create it"
        )
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            problem = schema_problem(revision_of(conn)) if check_schema else None
    except SQLAlchemyError as exc:
        engine.dispose()
        raise connect_error(url, exc) from exc
    if problem is not None:
        engine.dispose()
        raise StoreError(f"{mask(url)}: {problem}")
    return Store(engine)
