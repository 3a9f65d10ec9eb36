"""The time counters and the advice gauge exist at 0 for every bucket once a run is known."""

from __future__ import annotations

from trainwarden.supervisor.daemon.metrics import Metrics
from trainwarden.supervisor.goodput import BUCKETS


def _samples(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for fam in m.registry.collect()
        for s in fam.samples
        if s.name == name
    }


def test_run_seconds_exported_at_zero_and_only_rising() -> None:
    m = Metrics()
    m.run_known("llm")
    got = _samples(m, "trainwarden_run_seconds_total")
    assert {dict(k)["bucket"] for k in got} == set(BUCKETS)
    assert set(got.values()) == {0.0}
    assert _samples(m, "trainwarden_run_checkpoint_interval_advised_seconds") == {
        (("run", "llm"),): 0.0
    }
    m.run_goodput("llm", {"productive": 100.0, "rework": 5.0})
    m.run_goodput("llm", {"productive": 90.0, "rework": 20.0})  # never goes down
    got = _samples(m, "trainwarden_run_seconds_total")
    assert got[(("bucket", "productive"), ("run", "llm"))] == 100.0
    assert got[(("bucket", "rework"), ("run", "llm"))] == 20.0
    m.run_advice("llm", 917.0)
    assert (
        _samples(m, "trainwarden_run_checkpoint_interval_advised_seconds")[(("run", "llm"),)]
        == 917.0
    )
