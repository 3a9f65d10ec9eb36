"""Detectors: pure, virtual-time code that turns observations into events and conditions."""

from __future__ import annotations
