"""``python -m bench.loadgen SCENARIO... [options]``: see :mod:`bench.loadgen.cli`."""

import sys

from .cli import main

sys.exit(main())
