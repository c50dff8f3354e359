"""``python -m lowbit``: the command line (see :mod:`lowbit.cli.main`)."""

from lowbit.cli.main import main

main()
