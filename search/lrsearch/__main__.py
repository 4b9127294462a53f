"""`python -m lrsearch` is the `lrsearch` command."""

from lrsearch.cli import main

main()
