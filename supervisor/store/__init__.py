"""The persistent store (SQLAlchemy 2; SQLite by default, PostgreSQL in production).

Open with ``store.open_store``; create or migrate the schema with ``migrate.upgrade``
(``trainwarden db upgrade``). Records cross the API as frozen dataclasses (``records``).
The package itself imports nothing, so the CLI can name a record without loading SQLAlchemy.
"""

from __future__ import annotations
