"""`python -m converters --src kyutai --dst flax (--preset NAME | --config FILE) IN OUT` (see converters/cli.py)."""

import sys

from converters.cli import main

sys.exit(main())
