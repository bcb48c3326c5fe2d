"""The command line: one module of shared options and the Typer app, one module per group of commands, `main` registering them."""
