"""`python -m train CONFIG.json [--steps N] [--resume]` (train/cli.py)."""

import sys

from train.cli import main

sys.exit(main())
