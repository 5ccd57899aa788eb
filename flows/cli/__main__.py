"""``python -m flows.cli``: the ``distill`` command."""

from flows.cli import main

main()
