"""Errors of the login-node layer."""

from __future__ import annotations

from trainwarden.health.errors import TrainwardenError


class SupervisorError(TrainwardenError):
    """Base of login-node errors."""


class StoreError(SupervisorError):
    """The database cannot be reached or its schema is not what this version expects."""


class SchedulerError(SupervisorError):
    """A scheduler back-end refused or failed an operation; carries the scheduler's message."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class NotFoundError(SupervisorError):
    """An operator named a node, run or action that does not exist."""


class ConfigError(SupervisorError):
    """The daemon's configuration is invalid."""
