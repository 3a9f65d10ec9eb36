"""Cluster state and the lifecycles that are the only writers of a node's or a run's phase."""

from __future__ import annotations
