"""``python -m bench``: the benchmark suite's command line (bench.cli)."""

import sys

from bench.cli import main

sys.exit(main())
