"""The `hepc` entry point: the Typer app with every command registered (one module per group)."""

from __future__ import annotations

from hepc.cli import data, new, results, run, status, store, use  # noqa: F401  (validate, plan, run; results, diff, compare, report; new, schema)  # noqa: E402
from hepc.cli.app import app, exit_now, ignore_signals

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
