"""The one detector configuration: the daemon's defaults are the simulator's defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DetectorSettings:
    """How the detectors judge nodes and runs, and how the decision core's clock ticks."""

    # what the agents send by default (health.agent.AgentConfig.heartbeat_interval_s); the
    # daemon judges each node by the interval its own heartbeats announce
    heartbeat_interval_s: float = 5.0
    heartbeat_misses: float = 3.0
    # the interval an agent may announce is clamped to these bounds
    heartbeat_min_interval_s: float = 1.0
    heartbeat_max_interval_s: float = 60.0
    # behind on the bus: the median age of recent messages on arrival exceeds this, and
    # missed-heartbeat verdicts wait until the daemon has caught up
    behind_lag_s: float = 5.0
    # a lag that stays this long is a clock offset between this host and the nodes
    behind_max_s: float = 60.0
    # after the daemon reconnects to the broker, agents reconnect too (their back-off is
    # capped at 5 s): silence counts only from this long after the reconnect
    reconnect_grace_s: float = 10.0
    will_confirm_s: float = 2.0
    # a silence verdict waits this long, so that nodes falling silent together are seen
    # together: more than mass_silence_nodes (or mass_silence_fraction of the nodes) within
    # mass_silence_window_s are one outside cause, held as one mass silence and incident
    silence_settle_s: float = 2.0
    mass_silence_nodes: int = 10
    mass_silence_fraction: float = 0.02
    mass_silence_window_s: float = 30.0
    hang_k: float = 2.0
    hang_floor_s: float = 30.0
    # first step of an attempt: a large run loading a multi-TB checkpoint takes many minutes
    startup_timeout_s: float = 1800.0
    settle_s: float = 3.0  # after an attempt dies, wait this long for the node fault to show
    vet_period_s: float = 60.0  # healthy reports needed before a vetted node returns
    straggler_eval_s: float = 1.0  # how often straggler scores are evaluated
    tick_s: float = 0.5  # the daemon's tick: a deadline is noticed on the next tick

    def heartbeat_limit_s(self, grace_s: float = 1.0) -> float:
        """Silence after which the tracker declares a node dead (NodeHealthTracker.tick)."""
        return self.heartbeat_misses * self.heartbeat_interval_s + grace_s
