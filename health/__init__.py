"""Node side of trainwarden: probes, the agent, the training reporter, simulated hardware.

This is the lowest layer: it imports nothing from ``policies`` or ``supervisor``.
"""

from __future__ import annotations
