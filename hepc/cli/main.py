"""The `hepc` entry point: the Typer app with every command registered (one module per group)."""

from __future__ import annotations

from hepc.execute import early_signals

early_signals.install()  # before any heavy import: a SIGTERM while hepc starts exits 130, not 143

# The order of these imports is the order `hepc --help` lists the commands in.
# isort: off
from hepc.cli.app import app, exit_now, ignore_signals  # noqa: E402
from hepc.cli import run  # noqa: E402,F401  validate, plan, run
from hepc.cli import results  # noqa: E402,F401  results, diff, compare, report
from hepc.cli import new  # noqa: E402,F401  new, schema
from hepc.cli import data, status, store, use  # noqa: E402
# isort: on

store.register(app)  # verify, gc, unlock
status.register(app)  # status
use.register(app)  # sample, score, export, eval
data.register(app)  # data

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # a second signal that arrived while the first one was being handled
        ignore_signals()
        exit_now(130)



if __name__ == "__main__":
    main()
