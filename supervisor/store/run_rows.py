"""Runs, their attempts (one per submission) and the checkpoints they report."""

from __future__ import annotations

from dataclasses import fields as dc_fields
from typing import Any

from sqlalchemy import Connection, Row, select, update

from trainwarden.supervisor.errors import NotFoundError, StoreError
from trainwarden.supervisor.store.base import StoreCore, checked_fields, json_ready, table
from trainwarden.supervisor.store.records import AttemptRecord, CheckpointRecord, RunRecord

RUNS = table("runs")
ATTEMPTS = table("run_attempts")
CHECKPOINTS = table("checkpoints")
RUN_FIELDS = frozenset(f.name for f in dc_fields(RunRecord)) - {"name"}
ATTEMPT_FIELDS = frozenset(f.name for f in dc_fields(AttemptRecord)) - {"run", "attempt"}


class RunStore(StoreCore):
    """Runs, attempts and checkpoints."""

    # -- runs ---------------------------------------------------------------------------
    def add_run(self, run: RunRecord) -> None:
        """Add a new run; StoreError if one of that name exists."""
        row = {
            "name": run.name,
            "scheduler": run.scheduler,
            "spec": json_ready(dict(run.spec), f"the spec of run {run.name!r}"),
            "state": run.state,
            "created_at": float(run.created_at),
            "current_attempt": run.current_attempt,
            "restarts": run.restarts,
        }
        with self._write(f"adding run {run.name!r}") as conn:
            stmt = self._insert(RUNS).values(**row).on_conflict_do_nothing(index_elements=["name"])
            if conn.execute(stmt.returning(RUNS.c.name)).first() is None:
                raise StoreError(f"a run named {run.name!r} already exists")

    def update_run(self, name: str, /, **fields: Any) -> None:
        """Change some fields of a run (names as in RunRecord); NotFoundError if absent."""
        values = checked_fields(fields, RUN_FIELDS, f"run {name!r}")
        if "spec" in values:
            values["spec"] = json_ready(dict(values["spec"]), f"the spec of run {name!r}")
        with self._write(f"updating run {name!r}") as conn:
            if conn.execute(update(RUNS).where(RUNS.c.name == name).values(**values)).rowcount == 0:
                raise NotFoundError(f"no run named {name!r}")

    def runs(self) -> list[RunRecord]:
        with self._read("reading runs") as conn:
            return [_run(r) for r in conn.execute(select(RUNS).order_by(RUNS.c.created_at))]

    def run(self, name: str) -> RunRecord | None:
        with self._read("reading a run") as conn:
            row = conn.execute(select(RUNS).where(RUNS.c.name == name)).first()
        return None if row is None else _run(row)

    # -- attempts -----------------------------------------------------------------------
    def add_attempt(self, a: AttemptRecord) -> None:
        """Record a new attempt of an existing run; StoreError if that number exists."""
        row = {"run": a.run, "attempt": a.attempt, **_attempt_values(_record_fields(a))}
        with self._write(f"adding attempt {a.attempt} of run {a.run!r}") as conn:
            _require_run(conn, a.run)
            stmt = (
                self._insert(ATTEMPTS)
                .values(**row)
                .on_conflict_do_nothing(index_elements=["run", "attempt"])
            )
            if conn.execute(stmt.returning(ATTEMPTS.c.run)).first() is None:
                raise StoreError(f"attempt {a.attempt} of run {a.run!r} already exists")

    def update_attempt(self, run: str, attempt: int, /, **fields: Any) -> None:
        """Change some fields of an attempt (names as in AttemptRecord)."""
        what = f"attempt {attempt} of run {run!r}"
        values = _attempt_values(checked_fields(fields, ATTEMPT_FIELDS, what))
        where = (ATTEMPTS.c.run == run) & (ATTEMPTS.c.attempt == attempt)
        with self._write(f"updating attempt {attempt} of run {run!r}") as conn:
            if conn.execute(update(ATTEMPTS).where(where).values(**values)).rowcount == 0:
                raise NotFoundError(f"run {run!r} has no attempt {attempt}")

    def attempts(self, run: str) -> list[AttemptRecord]:
        q = select(ATTEMPTS).where(ATTEMPTS.c.run == run).order_by(ATTEMPTS.c.attempt)
        with self._read(f"reading attempts of run {run!r}") as conn:
            return [_attempt(r) for r in conn.execute(q)]

    def attempt(self, run: str, attempt: int) -> AttemptRecord | None:
        where = (ATTEMPTS.c.run == run) & (ATTEMPTS.c.attempt == attempt)
        with self._read(f"reading attempt {attempt} of run {run!r}") as conn:
            row = conn.execute(select(ATTEMPTS).where(where)).first()
        return None if row is None else _attempt(row)

    # -- checkpoints --------------------------------------------------------------------
    def add_checkpoint(self, c: CheckpointRecord) -> bool:
        """Record a reported checkpoint; True if new, False if run x step was known already
        (reports are retried, so this is idempotent and never changes the stored one)."""
        row = {f.name: getattr(c, f.name) for f in dc_fields(CheckpointRecord)}
        with self._write(f"adding checkpoint {c.step} of run {c.run!r}") as conn:
            _require_run(conn, c.run)
            stmt = (
                self._insert(CHECKPOINTS)
                .values(**row)
                .on_conflict_do_nothing(index_elements=["run", "step"])
            )
            # (RETURNING, not rowcount: drivers do not all report it for INSERT.)
            return conn.execute(stmt.returning(CHECKPOINTS.c.step)).first() is not None

    def checkpoints(self, run: str) -> list[CheckpointRecord]:
        """A run's checkpoints, oldest step first."""
        q = select(CHECKPOINTS).where(CHECKPOINTS.c.run == run).order_by(CHECKPOINTS.c.step)
        with self._read(f"reading checkpoints of run {run!r}") as conn:
            return [CheckpointRecord(**r._asdict()) for r in conn.execute(q)]

    def mark_checkpoint(
        self, run: str, step: int, valid: bool, reason: str | None = None, *, at: float
    ) -> None:
        """Record the validation verdict of one checkpoint."""
        where = (CHECKPOINTS.c.run == run) & (CHECKPOINTS.c.step == step)
        values = {"valid": valid, "reason": reason, "validated_at": float(at)}
        with self._write(f"marking checkpoint {step} of run {run!r}") as conn:
            if conn.execute(update(CHECKPOINTS).where(where).values(**values)).rowcount == 0:
                raise NotFoundError(f"run {run!r} has no checkpoint at step {step}")


def _require_run(conn: Connection, run: str) -> None:
    if conn.execute(select(RUNS.c.name).where(RUNS.c.name == run)).first() is None:
        raise NotFoundError(f"no run named {run!r}")


def _record_fields(a: AttemptRecord) -> dict[str, Any]:
    return {name: getattr(a, name) for name in ATTEMPT_FIELDS}


def _attempt_values(values: dict[str, Any]) -> dict[str, Any]:
    for key in ("nodes", "excluded"):
        if key in values:
            values[key] = [str(n) for n in values[key]]
    return values


def _run(r: Row[Any]) -> RunRecord:
    return RunRecord(**r._asdict())


def _attempt(r: Row[Any]) -> AttemptRecord:
    d = r._asdict()
    d["nodes"] = tuple(d["nodes"])
    d["excluded"] = tuple(d["excluded"])
    return AttemptRecord(**d)
