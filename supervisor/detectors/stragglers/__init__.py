"""Straggler detection: per-group robust scores, persistence, hang culprits, traces."""

from __future__ import annotations
