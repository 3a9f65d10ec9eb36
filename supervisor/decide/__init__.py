"""The decision core that the daemon and the simulator both drive, in their own time.

Synchronous and free of I/O: observations in (each with the time it happened), conditions,
node phases and the policy's decisions out. The daemon wraps it with the broker, the store
and the scheduler (``supervisor.daemon``); the simulator wraps it with its virtual cluster
(``supervisor.sim``). What ``trainwarden sim`` prints is therefore what the daemon decides.
"""

from __future__ import annotations
