"""``python -m moopt.cli``: the ``moopt`` command (moopt/cli is a package; its __init__ holds the click app)."""

from moopt.cli import main

main()
