"""The operator API: its contract (rows, constants), HTTP server, service, explain, client."""

from __future__ import annotations
