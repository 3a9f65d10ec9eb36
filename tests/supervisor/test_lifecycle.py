"""Node and attempt lifecycles: every allowed move, and errors on illegal ones."""

from __future__ import annotations

import pytest

from trainwarden.supervisor.model.lifecycle import (
    ATTEMPT_TRANSITIONS,
    NODE_TRANSITIONS,
    AttemptPhase,
    LifecycleError,
    NodePhase,
    attempt_move,
    node_move,
)


@pytest.mark.parametrize("src", list(NodePhase))
def test_node_moves(src: NodePhase) -> None:
    for dst in NodePhase:
        if dst == src or dst in NODE_TRANSITIONS[src]:
            assert node_move(src, dst) is dst
        else:
            with pytest.raises(LifecycleError, match=f"from {src} to {dst}"):
                node_move(src, dst)


def test_drained_node_cannot_become_suspect_or_failed() -> None:
    for dst in (NodePhase.SUSPECT, NodePhase.FAILED):
        with pytest.raises(LifecycleError):
            node_move(NodePhase.DRAINED, dst)


@pytest.mark.parametrize("src", list(AttemptPhase))
def test_attempt_moves(src: AttemptPhase) -> None:
    for dst in AttemptPhase:
        if dst == src or dst in ATTEMPT_TRANSITIONS[src]:
            assert attempt_move(src, dst) is dst
        else:
            with pytest.raises(LifecycleError):
                attempt_move(src, dst)
