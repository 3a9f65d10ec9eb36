"""Initial schema: nodes, runs, attempts, checkpoints, conditions, events, actions,
incidents and the leader lease.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types of this revision (never import the live models here).
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NAME = sa.String(length=255)
TAG = sa.String(length=32)


def _ts(name: str, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, sa.Double(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", NAME, nullable=False),
        sa.Column("state", TAG, nullable=False),
        sa.Column("scheduler_state", TAG, nullable=True),
        sa.Column("drained_by", TAG, nullable=True),
        sa.Column("drain_reason", sa.Text(), nullable=True),
        _ts("last_heartbeat_at", True),
        _ts("last_report_at", True),
        _ts("updated_at", True),
        sa.Column("labels", JSON, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_nodes")),
    )
    op.create_table(
        "runs",
        sa.Column("name", NAME, nullable=False),
        sa.Column("scheduler", TAG, nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("state", TAG, nullable=False),
        _ts("created_at"),
        sa.Column("current_attempt", sa.Integer(), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_runs")),
    )
    op.create_table(
        "run_attempts",
        sa.Column("run", NAME, nullable=False),
        sa.Column("attempt", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("state", TAG, nullable=False),
        sa.Column("job_id", NAME, nullable=True),
        sa.Column("nodes", JSON, nullable=False),
        sa.Column("excluded", JSON, nullable=False),
        sa.Column("resumed_from", sa.Text(), nullable=True),
        sa.Column("resumed_from_step", sa.Integer(), nullable=True),
        _ts("submitted_at", True),
        _ts("started_at", True),
        _ts("ended_at", True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column("first_step", sa.Integer(), nullable=True),
        sa.Column("last_step", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run"], ["runs.name"], name=op.f("fk_run_attempts_run_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run", "attempt", name=op.f("pk_run_attempts")),
    )
    op.create_table(
        "checkpoints",
        sa.Column("run", NAME, nullable=False),
        sa.Column("step", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        _ts("reported_at"),
        sa.Column("valid", sa.Boolean(), nullable=True),
        _ts("validated_at", True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run"], ["runs.name"], name=op.f("fk_checkpoints_run_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run", "step", name=op.f("pk_checkpoints")),
    )
    op.create_table(
        "conditions",
        sa.Column("subject", NAME, nullable=False),
        sa.Column("type", TAG, nullable=False),
        sa.Column("status", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        _ts("since"),
        _ts("updated_at"),
        sa.Column("evidence", JSON, nullable=False),
        sa.PrimaryKeyConstraint("subject", "type", name=op.f("pk_conditions")),
    )
    op.create_table(
        "events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        _ts("ts"),
        sa.Column("kind", TAG, nullable=False),
        sa.Column("node", NAME, nullable=True),
        sa.Column("run", NAME, nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_ts"), "events", ["ts"])
    op.create_index(op.f("ix_events_node_id"), "events", ["node", "id"])
    op.create_index(op.f("ix_events_run_id"), "events", ["run", "id"])
    op.create_table(
        "actions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        _ts("ts"),
        sa.Column("kind", TAG, nullable=False),
        sa.Column("actor", TAG, nullable=False),
        sa.Column("who", NAME, nullable=True),
        sa.Column("rule", NAME, nullable=True),
        sa.Column("node", NAME, nullable=True),
        sa.Column("run", NAME, nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("evidence", JSON, nullable=False),
        sa.Column("exclude", JSON, nullable=False),
        sa.Column("guards", JSON, nullable=False),
        sa.Column("verdict", TAG, nullable=False),
        sa.Column("status", TAG, nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        _ts("finished_at", True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_actions")),
    )
    op.create_index(op.f("ix_actions_ts"), "actions", ["ts"])
    op.create_index(op.f("ix_actions_status"), "actions", ["status"])
    op.create_index(op.f("ix_actions_node_ts"), "actions", ["node", "ts"])
    op.create_index(op.f("ix_actions_run_ts"), "actions", ["run", "ts"])
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", TAG, nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        _ts("opened_at"),
        _ts("closed_at", True),
        sa.Column("detail", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
    )
    op.create_index(op.f("ix_incidents_closed_at"), "incidents", ["closed_at"])
    op.create_table(
        "leader_lease",
        sa.Column("name", NAME, nullable=False),
        sa.Column("holder", NAME, nullable=False),
        _ts("expires_at"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leader_lease")),
    )


def downgrade() -> None:
    for table in (
        "leader_lease",
        "incidents",
        "actions",
        "events",
        "conditions",
        "checkpoints",
        "run_attempts",
        "runs",
        "nodes",
    ):
        op.drop_table(table)  # drops its indexes with it
