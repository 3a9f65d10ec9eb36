"""Schema versions through Alembic: upgrade, what revision a database is at, the head.

The Alembic scripts ship inside the package (``migrations/``), so ``trainwarden db
upgrade`` works from an installed wheel, not only from a checkout.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

import trainwarden.migrations
from trainwarden.supervisor.errors import StoreError
from trainwarden.supervisor.store.engine import (
    WRITE,
    connect_error,
    make_engine,
    mask,
    parse_url,
    sqlite_path,
)

UPGRADE_HINT = "run `trainwarden db upgrade`"


def migrations_dir() -> Path:
    """The shipped ``migrations`` package directory (``__path__`` rather than ``__file__``:
    an editable install made before it had an ``__init__`` sees a namespace package)."""
    for entry in trainwarden.migrations.__path__:
        if (Path(entry) / "env.py").is_file():
            return Path(entry).resolve()
    raise StoreError("the trainwarden installation is missing its migrations (migrations/env.py)")


def alembic_config(url: URL | None = None) -> Config:
    """Alembic's config pointed at the shipped scripts (and at ``url`` if given)."""
    here = migrations_dir()
    cfg = Config(str(here / "alembic.ini"))
    cfg.set_main_option("script_location", str(here))
    if url is not None:
        # ConfigParser interpolates '%': escape it (URL-encoded passwords contain it).
        cfg.set_main_option(
            "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
        )
    return cfg


def head_revision() -> str:
    """The revision this trainwarden's code needs."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise StoreError(f"migrations have {len(heads)} heads ({', '.join(heads)}); expected one")
    return heads[0]


def known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def revision_of(conn: Connection) -> str | None:
    """The revision a connected database is at; None when it has no schema yet."""
    heads = MigrationContext.configure(conn).get_current_heads()
    return heads[0] if heads else None


def schema_problem(current: str | None) -> str | None:
    """Why a database at ``current`` cannot be used by this code; None when it can."""
    head = head_revision()
    if current == head:
        return None
    if current is None:
        return (
            f"database schema is at revision none (empty), this trainwarden needs {head}: "
            f"{UPGRADE_HINT}"
        )
    if current not in known_revisions():
        return (
            f"database schema is at revision {current}, unknown to this trainwarden (it needs "
            f"{head}): the database was upgraded by a newer trainwarden; upgrade trainwarden"
        )
    return (
        f"database schema is at revision {current}, this trainwarden needs {head}: {UPGRADE_HINT}"
    )


def _engine_for_upgrade(raw: str) -> tuple[URL, Engine]:
    url = parse_url(raw)
    path = sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        raise StoreError(
            f"cannot use database '{mask(url)}': directory {path.parent} does not exist"
        )
    return url, make_engine(url)


def upgrade(raw_url: str, revision: str = "head") -> str | None:
    """Bring the database at ``raw_url`` to ``revision`` (creating it on SQLite); returns
    the revision it is at afterwards."""
    return _migrate(raw_url, revision, down=False)


def downgrade(raw_url: str, revision: str) -> str | None:
    """Take the database back to ``revision`` (``base`` drops everything)."""
    return _migrate(raw_url, revision, down=True)


def _migrate(raw_url: str, revision: str, *, down: bool) -> str | None:
    url, engine = _engine_for_upgrade(raw_url)
    cfg = alembic_config(url)
    try:
        with engine.connect() as conn:
            conn.execution_options(**{WRITE: True})
            cfg.attributes["connection"] = conn
            if down:
                command.downgrade(cfg, revision)
            else:
                command.upgrade(cfg, revision)
            conn.commit()
            return revision_of(conn)
    except CommandError as exc:
        raise StoreError(f"cannot migrate '{mask(url)}' to {revision}: {exc}") from exc
    except SQLAlchemyError as exc:
        raise connect_error(url, exc) from exc
    finally:
        engine.dispose()


def current(raw_url: str) -> str | None:
    """The revision the database at ``raw_url`` is at (None: no schema yet)."""
    url = parse_url(raw_url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return revision_of(conn)
    except SQLAlchemyError as exc:
        raise connect_error(url, exc) from exc
    finally:
        engine.dispose()
