#!/usr/bin/env python
"""The guide's spelling: `python scripts/run_hyperparameter_optimization.py --base_model ... ` is
`moopt optimize --base_model ...` (same flags, same behaviour)."""

import os
import sys

from moopt.cli import optimize
from moopt.memory.rss import bound_kernel_caches

if __name__ == "__main__":
    if sys.argv[1:] == ["--version"]:  # as `moopt --version` says it
        from importlib.metadata import version

        print(f"{os.path.basename(sys.argv[0])} (moopt), version {version('moopt')}")
        sys.exit(0)
    bound_kernel_caches()  # as the moopt command group does before any of its commands
    # the command itself, so that its usage and errors name this script ("Usage: run_hyperparameter_optimization.py
    # [OPTIONS]"), not the group's "... optimize", which this script does not take
    sys.exit(optimize.main(sys.argv[1:], prog_name=os.path.basename(sys.argv[0]), help_option_names=["-h", "--help"],
                           max_content_width=110))
