"""Health probes: one contract (``base``), one module per domain."""

from __future__ import annotations
