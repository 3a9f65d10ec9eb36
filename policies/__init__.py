"""Decision layer: turns conditions and events into actions, behind guards.

May import ``health`` (the vocabulary of faults), never ``supervisor``.
"""

from __future__ import annotations
