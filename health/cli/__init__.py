"""Node-side commands (agent, vet, hw): they import nothing from the login-node side."""

from __future__ import annotations
