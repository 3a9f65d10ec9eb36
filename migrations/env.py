"""Alembic environment: runs migrations on a connection trainwarden hands over (``trainwarden
db upgrade``) or on one made from the configured URL (Alembic's own CLI)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from trainwarden.supervisor.store.engine import WRITE, default_url, make_engine
from trainwarden.supervisor.store.schema import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or default_url())
    try:
        with engine.connect() as connection:
            connection.execution_options(**{WRITE: True})
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("trainwarden migrations run online only (offline SQL is not supported)")
run_migrations_online()
