"""The database schema as typed SQLAlchemy ORM models (``*Table``: the tables; rows cross the
store's API as the records in ``records.py``).

The schema changes only through Alembic (``migrations/``); a test checks that these
models and the migrations agree on SQLite and PostgreSQL. Timestamps are stored as
double-precision seconds since the epoch, exactly as the injected clock gives them, so
nothing is lost or shifted by time zones. JSON is JSONB on PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so migrations can name what they alter.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Json = JSON().with_variant(JSONB(), "postgresql")
# 64-bit ids on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the (64-bit) rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")
NAME = 255  # node, run and subject names
TAG = 32  # states, kinds, verdicts


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {float: Double(), dict[str, Any]: Json, list[Any]: Json}


class NodeTable(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    state: Mapped[str] = mapped_column(String(TAG))
    scheduler_state: Mapped[str | None] = mapped_column(String(TAG))
    drained_by: Mapped[str | None] = mapped_column(String(TAG))
    drain_reason: Mapped[str | None] = mapped_column(Text)
    last_heartbeat_at: Mapped[float | None]
    last_report_at: Mapped[float | None]
    updated_at: Mapped[float | None]
    labels: Mapped[dict[str, Any]]


class RunTable(Base):
    __tablename__ = "runs"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    scheduler: Mapped[str] = mapped_column(String(TAG))
    spec: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(TAG))
    created_at: Mapped[float]
    current_attempt: Mapped[int] = mapped_column(Integer)
    restarts: Mapped[int] = mapped_column(Integer)


class AttemptTable(Base):
    __tablename__ = "run_attempts"

    run: Mapped[str] = mapped_column(
        String(NAME), ForeignKey("runs.name", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(TAG))
    job_id: Mapped[str | None] = mapped_column(String(NAME))
    nodes: Mapped[list[Any]]
    excluded: Mapped[list[Any]]
    resumed_from: Mapped[str | None] = mapped_column(Text)
    resumed_from_step: Mapped[int | None] = mapped_column(Integer)
    submitted_at: Mapped[float | None]
    started_at: Mapped[float | None]
    ended_at: Mapped[float | None]
    end_reason: Mapped[str | None] = mapped_column(Text)
    first_step: Mapped[int | None] = mapped_column(Integer)
    last_step: Mapped[int | None] = mapped_column(Integer)


class CheckpointTable(Base):
    __tablename__ = "checkpoints"

    run: Mapped[str] = mapped_column(
        String(NAME), ForeignKey("runs.name", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    path: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int | None] = mapped_column(Integer)
    reported_at: Mapped[float]
    valid: Mapped[bool | None]
    validated_at: Mapped[float | None]
    reason: Mapped[str | None] = mapped_column(Text)


class ConditionTable(Base):
    __tablename__ = "conditions"

    subject: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    type: Mapped[str] = mapped_column(String(TAG), primary_key=True)
    status: Mapped[bool]
    reason: Mapped[str] = mapped_column(Text)
    since: Mapped[float]
    updated_at: Mapped[float]
    evidence: Mapped[list[Any]]


class EventTable(Base):
    """Append-only: rows are inserted, never updated."""

    __tablename__ = "events"
    __table_args__ = (
        Index(None, "ts"),
        Index(None, "node", "id"),
        Index(None, "run", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[float]
    kind: Mapped[str] = mapped_column(String(TAG))
    node: Mapped[str | None] = mapped_column(String(NAME))
    run: Mapped[str | None] = mapped_column(String(NAME))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]]


class ActionTable(Base):
    __tablename__ = "actions"
    __table_args__ = (
        Index(None, "ts"),
        Index(None, "status"),
        Index(None, "node", "ts"),
        Index(None, "run", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[float]
    kind: Mapped[str] = mapped_column(String(TAG))
    actor: Mapped[str] = mapped_column(String(TAG))
    who: Mapped[str | None] = mapped_column(String(NAME))
    rule: Mapped[str | None] = mapped_column(String(NAME))
    node: Mapped[str | None] = mapped_column(String(NAME))
    run: Mapped[str | None] = mapped_column(String(NAME))
    reason: Mapped[str] = mapped_column(Text)
    evidence: Mapped[list[Any]]
    exclude: Mapped[list[Any]]
    guards: Mapped[list[Any]]
    verdict: Mapped[str] = mapped_column(String(TAG))
    status: Mapped[str] = mapped_column(String(TAG))
    result: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[float | None]


class IncidentTable(Base):
    __tablename__ = "incidents"
    __table_args__ = (Index(None, "closed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(TAG))
    cause: Mapped[str] = mapped_column(Text)
    opened_at: Mapped[float]
    closed_at: Mapped[float | None]
    detail: Mapped[dict[str, Any]]


class LeaseTable(Base):
    """A named lease (``leader``) held by one daemon until ``expires_at``."""

    __tablename__ = "leader_lease"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    holder: Mapped[str] = mapped_column(String(NAME))
    expires_at: Mapped[float]
