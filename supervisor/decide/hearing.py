"""Whether the daemon can hear the agents, and so may judge a node by its silence.

It cannot while it is disconnected from the broker, nor while it is behind on the bus:
heartbeats then wait in its queue and their senders only look silent. Missed-heartbeat
verdicts are suspended meanwhile (last wills and reported faults still count). When it hears
again every node gets a full heartbeat window, counted after a grace when the daemon was
disconnected (the agents reconnect too, after their own back-off).
"""

from __future__ import annotations

from collections import deque
from statistics import median

from trainwarden.policies.model import Event, EventKind
from trainwarden.supervisor.decide.settings import DetectorSettings
from trainwarden.supervisor.detectors.node_faults import NodeHealthTracker, Observation

LAG_SAMPLES = 256  # the most recent messages whose age on arrival gives the lag (median:
# robust to a few nodes with wrong clocks)
LAG_WINDOW_S = 2.0  # ... among those that arrived this recently: a daemon that has caught up
# sees fresh messages only, and one that hears nothing has nothing queued either


class Hearing:
    def __init__(self, settings: DetectorSettings, tracker: NodeHealthTracker) -> None:
        self.settings = settings
        self.tracker = tracker
        self.connected = True  # an in-process driver (tests, the simulator) always hears
        self._ages: deque[tuple[float, float]] = deque(maxlen=LAG_SAMPLES)  # (arrival, age)
        self._now = 0.0
        self.suspended: str | None = None  # why silence is not judged now

    def disconnected(self) -> None:
        self.connected = False

    def reconnected(self) -> None:
        self.connected = True
        self._ages.clear()  # what was queued before the outage says nothing about now

    def message(self, now: float, sent_at: float) -> None:
        """A message's age on arrival (its sender's clock against ours)."""
        self._now = max(self._now, now)
        if sent_at > 0:
            self._ages.append((now, now - sent_at))

    def lag_s(self) -> float:
        recent = [age for at, age in self._ages if at >= self._now - LAG_WINDOW_S]
        return max(0.0, median(recent)) if recent else 0.0

    def update(self, now: float) -> list[Observation]:
        """Suspend or resume silence verdicts; an event records each change."""
        self._now = max(self._now, now)
        if not self.connected:
            why: str | None = "disconnected from the broker"
        elif self.lag_s() > self.settings.behind_lag_s:
            why = f"behind on the bus: messages arrive {self.lag_s():.1f} s after they were sent"
        else:
            why = None
        if why == self.suspended or (why is not None and self.suspended is not None):
            return []
        if why is not None:
            self.suspended = why
            self.tracker.deafen()
            return [
                Observation(
                    Event(
                        now,
                        EventKind.VERDICTS_SUSPENDED,
                        message=f"missed-heartbeat verdicts suspended: {why}",
                        data={"reason": why, "lag_s": round(self.lag_s(), 3)},
                    )
                )
            ]
        was, self.suspended = self.suspended, None
        # behind: everything queued has been read. Disconnected: the agents reconnect too.
        disconnected = was is not None and was.startswith("disconnected")
        grace = self.settings.reconnect_grace_s if disconnected else 0.0
        self.tracker.listen(now + grace)
        return [
            Observation(
                Event(
                    now,
                    EventKind.VERDICTS_RESUMED,
                    message=f"missed-heartbeat verdicts resumed ({was} before); every node has a "
                    "full heartbeat window from now",
                    data={"after": was},
                )
            )
        ]
