"""hang_culprits: who stopped reporting first."""

from __future__ import annotations

import pytest

from trainwarden.supervisor.detectors.stragglers.detector import RankLast, hang_culprits


def last(spec: dict[int, tuple[str, int, float]]) -> dict[int, RankLast]:
    return {r: RankLast(*v) for r, v in spec.items()}


@pytest.mark.parametrize(
    ("spec", "ranks", "nodes"),
    [
        # rank 2 is one step behind everyone: it stopped first
        (
            {0: ("a", 10, 100.0), 1: ("a", 10, 100.0), 2: ("b", 9, 90.0), 3: ("c", 10, 100.0)},
            (2,),
            ("b",),
        ),
        # all at one step, but ranks 4 and 5 (node c) went silent 30 s earlier
        (
            {
                0: ("a", 7, 100.0),
                1: ("a", 7, 101.0),
                2: ("b", 7, 100.0),
                3: ("b", 7, 100.5),
                4: ("c", 7, 70.0),
                5: ("c", 7, 70.0),
            },
            (4, 5),
            ("c",),
        ),
        # everyone stopped together: no single culprit
        ({0: ("a", 7, 100.0), 1: ("b", 7, 100.2), 2: ("c", 7, 99.9)}, (), ()),
        # most ranks behind: a shared cause, not theirs
        ({0: ("a", 5, 50.0), 1: ("b", 5, 50.0), 2: ("c", 5, 50.0), 3: ("d", 6, 60.0)}, (), ()),
        ({}, (), ()),
    ],
)
def test_hang_culprits_table(spec, ranks, nodes) -> None:
    got = hang_culprits(last(spec))
    assert (got.ranks, got.nodes) == (ranks, nodes)
    assert got.reason


def test_furthest_behind_are_named_first() -> None:
    got = hang_culprits(
        last(
            {
                0: ("a", 10, 1.0),
                1: ("b", 8, 1.0),
                2: ("c", 9, 1.0),
                3: ("d", 10, 1.0),
                4: ("e", 10, 1.0),
            }
        )
    )
    assert got.ranks == (1,) and got.step == 8
