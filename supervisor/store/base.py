"""What every part of the store shares: the engine, transactions, error translation, upserts.

Writes go through :meth:`StoreCore._write`: one transaction (``BEGIN IMMEDIATE`` on SQLite)
that commits everything or nothing, with any database failure turned into a
:class:`~supervisor.errors.StoreError` (:class:`StoreUnavailable` when retrying later may
help). Rows are written with Core statements so a batch is one multi-row statement per
table, not one round trip per row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, Table, case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from trainwarden.supervisor.errors import StoreError
from trainwarden.supervisor.store.engine import WRITE, mask
from trainwarden.supervisor.store.schema import Base

E = TypeVar("E", bound=Enum)


class StoreUnavailable(StoreError):
    """The database could not be reached or was busy; nothing was written, retry later."""


def table(name: str) -> Table:
    return Base.metadata.tables[name]


def enum_or_str(enum: type[E], value: str) -> E:
    """``enum(value)``, or the plain string when a newer trainwarden wrote a value this one
    does not know (StrEnum members compare equal to their strings, so callers still work)."""
    try:
        return enum(value)
    except ValueError:
        return cast(E, value)


def json_ready(value: Any, what: str) -> Any:
    """``value`` as JSON-compatible data, or StoreError naming ``what`` is not storable."""
    try:
        json.dumps(value, allow_nan=False)  # the driver serialises it again; this only checks
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store {what}: not JSON-serialisable ({exc})") from exc
    return value


def later_of(current: ColumnElement[Any], incoming: ColumnElement[Any]) -> ColumnElement[Any]:
    """SQL for the later of two nullable timestamps (portable, unlike GREATEST/MAX)."""
    return case(
        (incoming.is_(None), current),
        (current.is_(None), incoming),
        (incoming > current, incoming),
        else_=current,
    )


class StoreCore:
    """The engine and the transaction helpers the store's parts build on."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{WRITE: True})
        self.dialect = engine.dialect.name

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return mask(self._engine.url)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> StoreCore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self, what: str) -> Iterator[Connection]:
        """One write transaction; any failure rolls back all of it and raises StoreError."""
        try:
            with self._writer.begin() as conn:
                yield conn
        except StoreError:
            raise
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                raise StoreUnavailable(
                    f"{what}: database {self.url} unavailable: {_first_line(exc)}"
                ) from exc
            raise StoreError(f"{what}: rejected by the database: {_first_line(exc)}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"{what}: {_first_line(exc)}") from exc

    @contextmanager
    def _read(self, what: str) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreUnavailable(
                f"{what}: database {self.url} unavailable: {_first_line(exc)}"
            ) from exc

    def _insert(self, tbl: Table) -> Any:
        """A dialect INSERT that supports ON CONFLICT (both SQLite and PostgreSQL have it)."""
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        return dialect.insert(tbl)

    def _upsert(
        self,
        conn: Connection,
        tbl: Table,
        rows: Sequence[Mapping[str, Any]],
        keys: Sequence[str],
        update: Mapping[str, Any] | None = None,
    ) -> None:
        """Insert ``rows``; on a key conflict set ``update`` (default: every non-key column
        to the incoming value). ``update`` values may use ``stmt.excluded`` via a callable."""
        if not rows:
            return
        stmt = self._insert(tbl)
        if update is None:
            sets: dict[str, Any] = {
                c.name: stmt.excluded[c.name] for c in tbl.columns if c.name not in keys
            }
        else:
            sets = {k: (v(stmt.excluded) if callable(v) else v) for k, v in update.items()}
        conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=sets), rows)


def checked_fields(fields: Mapping[str, Any], allowed: frozenset[str], what: str) -> dict[str, Any]:
    """``fields`` for an UPDATE of ``what``, or StoreError naming the unknown ones."""
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise StoreError(
            f"cannot update {what}: unknown field(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(allowed))})"
        )
    if not fields:
        raise StoreError(f"cannot update {what}: no fields given")
    return dict(fields)


def dedupe(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Keep the last row per key: one multi-row upsert may not touch a row twice."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        out[tuple(row[k] for k in keys)] = row
    return list(out.values())


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__
