"""Errors of the decision layer."""

from __future__ import annotations

from trainwarden.health.errors import TrainwardenError


class PolicyError(TrainwardenError):
    """A policy file (or a scenario) is invalid; the message names the file, place and problem.

    ``problems`` holds one line per error so a caller can list every mistake at once.
    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)
