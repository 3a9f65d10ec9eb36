"""Login-node side of trainwarden. Where is X?

- ``model/``: the cluster as the daemon knows it (nodes, runs, their specs) and the
  lifecycles (transition tables) that are the only writers of a node's or a run's phase.
- ``detectors/``: pure, virtual-time detectors: node faults and liveness, run progress and
  hangs, the condition book, and ``stragglers/`` (scores, persistence, hang culprits, traces).
- ``decide/``: the decision core both drivers use: observations -> conditions -> node
  phases -> the policy's decisions; vetting and return to service; the detector settings.
- ``daemon/``: the process around the core: the context it works on, the supervisor
  (ingestion and the tick), the executor (every action, with retry, audit and metrics),
  upkeep, restore and run registration (``operations``), crash recovery (``reconcile``),
  runs and checkpoints, the store thread, systemd notify, the embedded broker, the
  Prometheus metrics, the process itself.
- ``api/``: the operator API: its contract (rows, constants), the HTTP server, the service
  behind it, ``--explain``, and the HTTP client the CLI uses.
- ``cli/``: one module per noun of the ``trainwarden`` command, plus ``render`` for output.
- ``store/``: SQLAlchemy 2 (SQLite, PostgreSQL), schema through Alembic (``migrations/``).
- ``scheduler/``: back-ends behind one interface: local processes, Slurm.
- ``sim/``: the virtual cluster that drives ``decide/`` for ``trainwarden sim``.
- ``demo.py``: ``trainwarden demo``; ``errors.py``: this layer's errors.

Node-side code lives in ``trainwarden.health`` (its commands in ``health/cli``); decisions as
data (rules, guards, the engine) in ``trainwarden.policies``. This package may import both;
neither imports it.
"""

from __future__ import annotations
