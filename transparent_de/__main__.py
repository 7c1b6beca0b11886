"""``python -m transparent_de``: the command line (see :mod:`transparent_de.cli`)."""

import sys

from .cli import main

sys.exit(main())
