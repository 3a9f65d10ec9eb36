"""What a SIGHUP does with the configuration read again: the settings that can change under a
running daemon are taken, the others are named (a restart applies them), none is ignored
without a word.

Taken: who holds which role (``--viewers``, ``--operators``, ``--admins``: revoking an
operator must not wait for a restart) and which policy file is read (the same SIGHUP reads
it). Everything else (the database, the broker, the listeners and their tokens file's path,
the scheduler, the mode, the detectors' settings) is built into the running daemon once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

LIVE = frozenset({"roles", "policy_file"})

C = TypeVar("C")


def split_changes(
    old: C, new: C, live: frozenset[str] = LIVE
) -> tuple[C, tuple[str, ...], tuple[str, ...]]:
    """``old`` with the ``live`` settings of ``new``, and the names of the settings that
    changed: those taken, those left for a restart. Values are never reported (some are
    secrets)."""
    if not dataclasses.is_dataclass(old) or isinstance(old, type):
        raise TypeError(f"{type(old).__name__} is not a dataclass instance")
    taken: list[str] = []
    later: list[str] = []
    for f in dataclasses.fields(old):
        if getattr(old, f.name) != getattr(new, f.name):
            (taken if f.name in live else later).append(f.name)
    values: dict[str, Any] = {k: getattr(new, k) for k in taken}
    return dataclasses.replace(old, **values), tuple(taken), tuple(later)
