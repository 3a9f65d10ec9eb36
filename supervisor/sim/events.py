"""The simulator's stand-in for the store's event log: events get ids from 1, in order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from trainwarden.policies.model import Event


class EventLog:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.by_id: dict[int, Event] = {}

    def record(self, events: Sequence[Event]) -> list[Event]:
        """Append events; returns them with their ids (the store's job in the daemon)."""
        out = []
        for raw in events:
            ev = replace(raw, id=len(self.events) + 1)
            self.events.append(ev)
            self.by_id[len(self.events)] = ev
            out.append(ev)
        return out
