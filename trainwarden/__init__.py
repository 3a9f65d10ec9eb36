"""trainwarden: a fault-tolerant supervisor for large GPU training runs.

The repository keeps one folder per layer (``health/``, ``policies/``, ``supervisor/``,
``migrations/``); they are installed and imported under this package only, so the wheel
puts nothing else at the top level (``supervisor`` is also supervisord's import name).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trainwarden")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
