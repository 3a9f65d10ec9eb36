"""Alembic migrations of trainwarden's store; shipped as package data so
``trainwarden db upgrade`` works from an installed wheel."""

from __future__ import annotations
