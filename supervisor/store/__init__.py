"""The persistent store (SQLAlchemy 2; SQLite by default, PostgreSQL in production).

Open with :func:`open_store`; create or migrate the schema with :func:`upgrade`
(``trainwarden db upgrade``). Records cross the API as frozen dataclasses.
"""

from __future__ import annotations

from trainwarden.supervisor.store.base import StoreUnavailable
from trainwarden.supervisor.store.engine import default_url, mask, parse_url, state_dir
from trainwarden.supervisor.store.migrate import current, downgrade, head_revision, upgrade
from trainwarden.supervisor.store.records import (
    ActionRecord,
    ActionStatus,
    AttemptRecord,
    CheckpointRecord,
    IncidentRecord,
    Lease,
    NodeRecord,
    RunRecord,
    StoreBatch,
    initial_status,
)
from trainwarden.supervisor.store.store import Store, open_store

__all__ = [
    "ActionRecord",
    "ActionStatus",
    "AttemptRecord",
    "CheckpointRecord",
    "IncidentRecord",
    "Lease",
    "NodeRecord",
    "RunRecord",
    "Store",
    "StoreBatch",
    "StoreUnavailable",
    "current",
    "default_url",
    "downgrade",
    "head_revision",
    "initial_status",
    "mask",
    "open_store",
    "parse_url",
    "state_dir",
    "upgrade",
]
