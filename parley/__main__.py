"""`python -m parley ...`: the same as the `parley` command."""

from parley.cli import main

main()
