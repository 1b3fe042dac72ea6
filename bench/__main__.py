"""``python -m lossbench.bench``: the ``lossbench`` command (lossbench.bench.cli)."""

import sys

from lossbench.bench.cli import main

sys.exit(main())
