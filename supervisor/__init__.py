"""Login-node side of trainwarden: ingest, state, detectors, actions, store, API, CLI, daemon."""

from __future__ import annotations
