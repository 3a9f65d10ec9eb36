"""The condition book: lasting state per subject x type, changed only on a real transition.

A repeated observation of the same status and reason returns ``None`` (nothing changed), so
downstream policies see one transition, not a flood -- that is what stops flapping.
"""

from __future__ import annotations

from collections.abc import Iterable

from trainwarden.policies.model import Condition, ConditionType


class ConditionBook:
    """In-memory view of all conditions (loaded from the store at start)."""

    def __init__(self, initial: Iterable[Condition] = ()) -> None:
        self._conds: dict[tuple[str, ConditionType], Condition] = {}
        for c in initial:
            self._conds[(c.subject, c.type)] = c

    def get(self, subject: str, ctype: ConditionType) -> Condition | None:
        return self._conds.get((subject, ctype))

    def is_true(self, subject: str, ctype: ConditionType) -> bool:
        c = self._conds.get((subject, ctype))
        return c is not None and c.status

    def apply(
        self,
        subject: str,
        ctype: ConditionType,
        status: bool,
        reason: str,
        now: float,
        evidence: tuple[int, ...] = (),
    ) -> Condition | None:
        """Set a condition; return the new condition only if status changed.

        All conditions start false: setting an unknown condition to false is no change.
        A reason change while the status stays the same updates the stored reason but is
        not a transition (returns ``None``).
        """
        old = self._conds.get((subject, ctype))
        if old is None and not status:
            return None
        if old is not None and old.status == status:
            if old.reason != reason:
                self._conds[(subject, ctype)] = Condition(
                    subject, ctype, status, reason, old.since, old.evidence + evidence
                )
            return None
        new = Condition(subject, ctype, status, reason, now, evidence)
        self._conds[(subject, ctype)] = new
        return new

    def active(self, subject: str | None = None) -> list[Condition]:
        return [
            c for (s, _), c in self._conds.items() if c.status and (subject is None or s == subject)
        ]

    def types_of(self, subject: str) -> frozenset[ConditionType]:
        return frozenset(c.type for c in self.active(subject))

    def all(self) -> list[Condition]:
        return list(self._conds.values())
