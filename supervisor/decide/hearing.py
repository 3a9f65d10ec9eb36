"""Whether the daemon can hear the agents, and so may judge a node by its silence.

It cannot while it is disconnected from the broker, nor while it is behind on the bus:
heartbeats then wait in its queue and their senders only look silent. Silence verdicts
(missed heartbeats, unconfirmed last wills, hung runs) are suspended meanwhile; reported
faults still count. After a disconnection every node and run gets a full window counted
from a reconnect grace (the agents reconnect too, after their own back-off); after being
behind, nothing is reset: what was queued has been read, and who is still silent is.

The lag is the median age on arrival of recent accepted heartbeats. A lag that stays for
``behind_max_s`` is a difference between this host's clock and the nodes', not a queue: it
is taken as an offset (with an event saying so, check NTP) and verdicts resume, so a skewed
clock can hide a dead node for a minute at most, never for good.
"""

from __future__ import annotations

from collections import deque
from statistics import median

from trainwarden.policies.model import Event, EventKind
from trainwarden.supervisor.decide.settings import DetectorSettings
from trainwarden.supervisor.detectors.node_faults import NodeHealthTracker, Observation

LAG_SAMPLES = 256  # the most recent heartbeats whose age on arrival gives the lag
LAG_WINDOW_S = 2.0  # ... among those that arrived this recently: a daemon that has caught up
# sees fresh messages only, and one that hears nothing has nothing queued either
DISCONNECTED = "disconnected from the broker"


class Hearing:
    def __init__(self, settings: DetectorSettings, tracker: NodeHealthTracker) -> None:
        self.settings = settings
        self.tracker = tracker
        self.connected = True  # an in-process driver (tests, the simulator) always hears
        self._ages: deque[tuple[float, float]] = deque(maxlen=LAG_SAMPLES)  # (arrival, age)
        self._now = 0.0
        self._offset = 0.0  # the steady part of the age: clock offset, not lag
        self._behind_since: float | None = None
        self._needs_grace = False  # a disconnection since verdicts last resumed
        self.suspended: str | None = None  # why silence is not judged now

    def disconnected(self) -> None:
        """At once, not at the next tick: a short outage between two ticks counts too."""
        self.connected = False
        self._needs_grace = True
        self.tracker.deafen()

    def reconnected(self) -> None:
        self.connected = True
        self._ages.clear()  # what was queued before the outage says nothing about now

    def heartbeat(self, now: float, sent_at: float) -> None:
        """An accepted heartbeat's age on arrival (its sender's clock against ours)."""
        self._now = max(self._now, now)
        if sent_at > 0:
            self._ages.append((now, now - sent_at))

    def _raw_lag(self) -> float | None:
        recent = [age for at, age in self._ages if at >= self._now - LAG_WINDOW_S]
        return median(recent) if recent else None

    def lag_s(self) -> float:
        raw = self._raw_lag()
        return max(0.0, raw - self._offset) if raw is not None else 0.0

    def _why(self, now: float) -> tuple[str | None, list[Observation]]:
        if not self.connected:
            return DISCONNECTED, []
        raw = self._raw_lag()
        if raw is not None and raw < self._offset:
            self._offset = max(0.0, raw)  # the clocks came closer: follow them down
        lag = self.lag_s()
        if lag <= self.settings.behind_lag_s:
            self._behind_since = None
            return None, []
        if self._behind_since is None:
            self._behind_since = now
        if now - self._behind_since < self.settings.behind_max_s:
            return f"behind on the bus: heartbeats arrive {lag:.1f} s after they were sent", []
        self._offset += lag
        self._behind_since = None
        note = (
            f"heartbeats have arrived {lag:.1f} s after their timestamps for "
            f"{self.settings.behind_max_s:.0f} s: taken as a clock offset between this host "
            "and the nodes, not a queue (check NTP)"
        )
        return None, [
            Observation(
                Event(
                    now,
                    EventKind.VERDICTS_RESUMED,
                    message=note,
                    data={"clock_offset_s": round(self._offset, 3)},
                )
            )
        ]

    def update(self, now: float) -> list[Observation]:
        """Suspend or resume silence verdicts; an event records each change."""
        self._now = max(self._now, now)
        why, out = self._why(now)
        if why is not None:
            if self.suspended is None:
                self.suspended = why
                self.tracker.deafen()
                out.append(self._event(now, EventKind.VERDICTS_SUSPENDED, why))
            elif why == DISCONNECTED:
                self.suspended = why  # a disconnection outranks being behind
            return out
        if self.suspended is None and not self._needs_grace:
            return out
        was = self.suspended or f"{DISCONNECTED} briefly"
        self.suspended = None
        if self._needs_grace:  # the agents reconnect too: count silence after a grace
            self._needs_grace = False
            grace = self.settings.reconnect_grace_s
            self.tracker.listen(now, now + grace)
            text = f"every node and run has a full window from {grace:.0f} s from now"
        else:
            self.tracker.resume(now)
            text = "what was queued has been read"
        out.append(self._event(now, EventKind.VERDICTS_RESUMED, f"({was} before); {text}"))
        return out

    def _event(self, now: float, kind: EventKind, why: str) -> Observation:
        verb = "suspended: " if kind is EventKind.VERDICTS_SUSPENDED else "resumed "
        return Observation(Event(
            now, kind, message=f"silence verdicts {verb}{why}",
            data={"reason": why, "lag_s": round(self.lag_s(), 3)},
        ))  # fmt: skip
