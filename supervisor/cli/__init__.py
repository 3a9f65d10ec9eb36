"""The ``trainwarden`` command: one module per noun, logic below it."""

from __future__ import annotations
