"""One error base for the whole project; each layer subclasses it.

Lives in the lowest layer so every layer can name it without importing upward.
"""

from __future__ import annotations


class TrainwardenError(Exception):
    """Base of every error trainwarden raises on purpose (never a bare traceback)."""


class HealthError(TrainwardenError):
    """Node-side failure: probe setup, NVML, agent configuration."""


class ReportError(TrainwardenError):
    """A message on the bus that cannot be accepted (malformed, oversized, wrong version...)."""
