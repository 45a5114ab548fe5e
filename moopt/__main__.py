"""``python -m moopt``: the ``moopt`` command."""

from moopt.cli import main

main(prog_name="moopt")
