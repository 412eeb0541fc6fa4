"""``python -m kndkit``: the ``kndkit`` command (see :mod:`kndkit.cli`)."""

from __future__ import annotations

import sys

from kndkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
