"""Database URLs and engines: SQLite by default, PostgreSQL in production.

Every way a URL can be wrong (unparseable, unknown dialect, host unreachable, database
missing) becomes one :class:`~trainwarden.supervisor.errors.StoreError` sentence that names the URL
with its password masked. SQLite runs in WAL mode with foreign keys on and a busy
timeout; write transactions start with ``BEGIN IMMEDIATE`` so two writers queue on the
busy timeout instead of failing half-way through.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from trainwarden.supervisor.errors import StoreError

EXAMPLES = "sqlite:///path/to/trainwarden.db or postgresql+psycopg://user@host/dbname"
SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 5
WRITE = "tw_write"  # execution option: this connection's transactions will write


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the daemon keeps local state (created): $TRAINWARDEN_STATE_DIR or XDG default."""
    env = os.environ if env is None else env
    raw = env.get("TRAINWARDEN_STATE_DIR")
    path = Path(raw).expanduser() if raw else Path.home() / ".local" / "state" / "trainwarden"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create state directory {path}: {exc.strerror}") from exc
    return path


def default_url(env: Mapping[str, str] | None = None) -> str:
    """$TRAINWARDEN_DB_URL, else an SQLite file in the state directory."""
    env = os.environ if env is None else env
    url = env.get("TRAINWARDEN_DB_URL", "").strip()
    if url:
        return url
    return f"sqlite:///{state_dir(env) / 'trainwarden.db'}"


def mask(url: str | URL) -> str:
    """The URL as it may be shown to people: password replaced by ***."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url if ":" not in url or "@" not in url else url.split("@")[-1]


def parse_url(raw: str) -> URL:
    """Parse and normalise a database URL, or raise StoreError saying what is wrong."""
    text = raw.strip()
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"invalid database URL '{mask(text)}': expected {EXAMPLES}") from exc
    backend = url.get_backend_name()
    if backend == "postgresql":
        if "+" not in url.drivername:
            url = url.set(drivername="postgresql+psycopg")  # the driver we ship
        if not url.database:
            raise StoreError(f"database URL '{mask(url)}' names no database: expected {EXAMPLES}")
    elif backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise StoreError(
                f"database URL '{mask(url)}' is an in-memory SQLite database, which would "
                f"lose everything at exit: give a file, e.g. {EXAMPLES}"
            )
    else:
        raise StoreError(
            f"unsupported database URL '{mask(url)}': trainwarden stores its state in "
            f"SQLite or PostgreSQL, e.g. {EXAMPLES}"
        )
    return url


def sqlite_path(url: URL) -> Path | None:
    """The file of an SQLite URL, None for other dialects."""
    if url.get_backend_name() != "sqlite" or url.database is None:
        return None
    return Path(url.database)


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's begin event, not the driver, decide where transactions start.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")  # durable across app crashes under WAL
        cur.execute("PRAGMA foreign_keys = ON")
    finally:
        cur.close()


def _sqlite_begin(conn: Any) -> None:
    immediate = conn.get_execution_options().get(WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(raw: str | URL) -> Engine:
    """An engine for ``raw`` (checked, not yet connected)."""
    url = raw if isinstance(raw, URL) else parse_url(raw)
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except NoSuchModuleError as exc:
        raise StoreError(
            f"unsupported database URL '{mask(url)}': no driver for it is installed "
            f"(use {EXAMPLES})"
        ) from exc
    except (ArgumentError, ImportError) as exc:
        raise StoreError(f"invalid database URL '{mask(url)}': {exc}") from exc
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def connect_error(url: URL | str, exc: SQLAlchemyError) -> StoreError:
    """Turn a driver's connection failure into one sentence naming the (masked) URL."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    detail = lines[0] if lines else type(orig).__name__
    # psycopg prefixes 'connection failed: connection to server at ... failed:'; keep the cause.
    for line in lines:
        if "does not exist" in line or "refused" in line or "timeout" in line.lower():
            detail = line
            break
    return StoreError(f"cannot use database '{mask(url)}': {detail}")
