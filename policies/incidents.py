"""Incidents: what automation stops for. Correlated failures open and clear here by themselves.

Many nodes reporting one shared cause (``storage:/capstor``, ``fabric:leaf-r07``) within a
window is a cluster event, not many bad nodes: the book opens a correlated-failure
incident, remembers its nodes, and clears it once no node has reported the cause for
``clear_after``. Crash loops, spent restart budgets and lemon nodes are raised by the
engine and closed only by an operator.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from trainwarden.policies.model import ClusterView, Incident, IncidentKind
from trainwarden.policies.rules import Correlation, describe_duration


class IncidentBook:
    def __init__(self, cfg: Correlation) -> None:
        self._cfg = cfg
        self._incidents: dict[str, Incident] = {}
        self._onsets: dict[str, deque[tuple[float, str, tuple[int, ...]]]] = {}
        self._by_cause: dict[str, str] = {}  # open correlated incident id per cause
        self._last_seen: dict[str, float] = {}
        self._seq = 0

    def configure(self, cfg: Correlation) -> None:
        self._cfg = cfg

    def _new_id(self) -> str:
        self._seq += 1
        return f"INC-{self._seq}"

    def onset(
        self, node: str, causes: frozenset[str], now: float, evidence: tuple[int, ...]
    ) -> list[Incident]:
        """A node condition became true; returns incidents this opened."""
        opened: list[Incident] = []
        for cause in sorted(causes):
            q = self._onsets.setdefault(cause, deque())
            q.append((now, node, evidence))
            while q and now - q[0][0] > self._cfg.window_s:
                q.popleft()
            iid = self._by_cause.get(cause)
            if iid is not None:
                inc = self._incidents[iid]
                if node not in inc.nodes:
                    self._incidents[iid] = replace(
                        inc, nodes=(*inc.nodes, node), evidence=(*inc.evidence, *evidence)
                    )
                self._last_seen[iid] = now
                continue
            nodes = tuple(dict.fromkeys(n for _, n, _ in q))
            if len(nodes) >= self._cfg.min_nodes:
                inc = Incident(
                    self._new_id(),
                    IncidentKind.CORRELATED,
                    cause,
                    now,
                    f"{len(nodes)} nodes reported {cause} within "
                    f"{describe_duration(self._cfg.window_s)}: cluster incident; no "
                    "drains, restarts held until it clears",
                    nodes,
                    None,
                    tuple(e for _, _, ev in q for e in ev),
                )
                self._incidents[inc.id] = inc
                self._by_cause[cause] = inc.id
                self._last_seen[inc.id] = now
                opened.append(inc)
        return opened

    def sweep(self, view: ClusterView) -> list[Incident]:
        """Clear correlated incidents whose cause nobody has reported for ``clear_after``."""
        if not self._by_cause:
            return []
        live = {c for n in view.nodes.values() for c in n.causes if c in self._by_cause}
        cleared: list[Incident] = []
        for cause, iid in list(self._by_cause.items()):
            if cause in live:
                self._last_seen[iid] = view.now
            elif view.now - self._last_seen[iid] >= self._cfg.clear_after_s:
                inc = self._incidents[iid]
                inc = replace(
                    inc,
                    cleared_at=view.now,
                    detail=(
                        f"{cause}: {len(inc.nodes)} nodes affected, none reporting it for "
                        f"{describe_duration(self._cfg.clear_after_s)}; cluster incident cleared, "
                        "held actions resume"
                    ),
                )
                self._incidents[iid] = inc
                del self._by_cause[cause]
                self._onsets.pop(cause, None)
                cleared.append(inc)
        return cleared

    def raise_incident(
        self,
        kind: IncidentKind,
        subject: str,
        now: float,
        detail: str,
        evidence: tuple[int, ...] = (),
        nodes: tuple[str, ...] = (),
    ) -> Incident:
        inc = Incident(self._new_id(), kind, subject, now, detail, nodes, None, evidence)
        self._incidents[inc.id] = inc
        return inc

    def close(self, iid: str, ts: float) -> Incident | None:
        inc = self._incidents.get(iid)
        if inc is None or not inc.open:
            return None
        inc = replace(inc, cleared_at=ts)
        self._incidents[iid] = inc
        if self._by_cause.get(inc.subject) == iid:
            del self._by_cause[inc.subject]
        return inc

    def restore(self, incidents: list[Incident], now: float, seq: int) -> None:
        """Incidents the store kept across a daemon restart; new ones are numbered after
        ``seq``. A correlated one counts as seen ``now`` (it clears ``clear_after`` on)."""
        self._seq = max(self._seq, seq)
        for inc in incidents:
            self._incidents[inc.id] = inc
            if inc.open and inc.kind is IncidentKind.CORRELATED:
                self._by_cause[inc.subject] = inc.id
                self._last_seen[inc.id] = now

    def open_causes(self) -> set[str]:
        return set(self._by_cause)

    def open_correlated(self) -> list[Incident]:
        return [self._incidents[i] for i in self._by_cause.values()]

    def all(self) -> list[Incident]:
        return list(self._incidents.values())
