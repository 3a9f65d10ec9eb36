"""Scheduler back-ends behind one interface (``base.Scheduler``): local processes, Slurm."""

from __future__ import annotations
