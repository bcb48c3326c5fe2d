"""`python -m hepc.cli ...`: the same as the `hepc` command."""

from hepc.cli.main import main

main()
