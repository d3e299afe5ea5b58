"""``python -m megara_dark`` is the ``megara-dark`` command."""

import sys

from .cli import main

sys.exit(main())
