"""``python -m trainwarden``: the same as the ``trainwarden`` command."""

from __future__ import annotations

import sys

from trainwarden.cli import main

sys.exit(main())
