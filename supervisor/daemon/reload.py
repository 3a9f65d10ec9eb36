"""What a SIGHUP does with the configuration read again: the settings that can change under a
running daemon are taken, the others are named (a restart applies them), none is ignored
without a word.

Taken: who holds which role (``--viewers``, ``--operators``, ``--admins``: revoking an
operator must not wait for a restart) and which policy file is read (the same SIGHUP reads
it). Everything else (the database, the broker, the listeners and their tokens file's path,
the scheduler, the mode, the detectors' settings) is built into the running daemon once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from trainwarden.health.errors import HealthError
from trainwarden.supervisor.errors import ConfigError

log = logging.getLogger(__name__)

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


async def reread(old: C, read: Callable[[], C]) -> C:
    """The configuration to run with after a SIGHUP: ``old`` with the live settings that
    ``read`` (run in a thread: it reads files and asks NSS) gives now, each change said;
    ``old`` itself when ``read`` fails (it names the file's line, or the unknown name)."""
    try:
        new = await asyncio.to_thread(read)
    except (ConfigError, HealthError) as exc:
        log.error("configuration reload failed, keeping the settings read before: %s", exc)
        return old
    now, taken, later = split_changes(old, new)
    if taken:
        log.info("configuration reloaded: %s now in effect", ", ".join(taken))
    if later:
        log.warning(
            "configuration changed, but only a restart applies it (systemctl restart "
            "trainwarden-daemon): %s",
            ", ".join(later),
        )
    if not taken and not later:
        log.info("configuration reread: no setting changed")
    return now
