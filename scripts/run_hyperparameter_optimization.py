#!/usr/bin/env python
"""The guide's spelling: `python scripts/run_hyperparameter_optimization.py --base_model ... ` is
`moopt optimize --base_model ...` (same flags, same behaviour)."""

import sys

from moopt.cli import main

if __name__ == "__main__":
    sys.exit(main(["optimize", *sys.argv[1:]]))
