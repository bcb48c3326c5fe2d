"""`hepc status [SPEC] [--watch] [--json] [--store S]`: what a store is doing right now (hepc.observe.status).

A plain function (`status_command`) that returns an exit code, plus `register(app)`, which
`hepc.cli` calls at its end to add it to the Typer app (as hepc.cli.store does; no `from __future__
import annotations` here: the Typer signature is built inside `register` from hepc.cli's option types).
"""

import json
import sys
import time

WATCH_EVERY_S = 2.0


def _compile(spec: str, overrides=()):
    from hepc.compile.compiler import compile_spec
    from hepc.spec.load import load_spec

    loaded = load_spec(spec, list(overrides or []))
    return loaded, compile_spec(loaded)


def status_command(
    spec: str | None = None,
    overrides=None,
    store: str | None = None,
    watch: bool = False,
    json_out: bool = False,
) -> int:
    """Print the store's leases and live progress (and SPEC's graph progress and ETA); read-only.

    `watch`: redraw every WATCH_EVERY_S until Ctrl-C (exit 0) or until SPEC's graph is committed."""
    from hepc.observe.status import collect, open_store
    from hepc.store.layout import resolve_store_path

    compiled = runtime = None
    spec_store = None
    if spec is not None:
        loaded, compiled = _compile(spec, overrides)
        for w in compiled.warnings:
            print(f"warning: {w}", file=sys.stderr)
        runtime = loaded.spec.runtime
        spec_store = runtime.store
    elif overrides:
        from hepc.errors import HepcError

        raise HepcError(f"overrides ({' '.join(overrides)}) need a SPEC to apply to")
    the_store = open_store(resolve_store_path(store, spec_store))
    if not the_store.has_marker():
        print(f"store {the_store.root}: empty (nothing has run into it yet; `hepc run` makes it a store)", file=sys.stderr)

    def snapshot() -> dict:
        the_store.refresh()  # other processes commit meanwhile
        return collect(the_store, compiled, runtime)

    if not watch:
        _show(snapshot(), json_out)
        return 0
    try:
        _watch(snapshot, json_out)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    return 0


def _complete(st: dict) -> bool:
    return st["graph"] is not None and st["graph"]["complete"]


def _show(st: dict, json_out: bool, *, stamp: bool = False, compact: bool = False) -> None:
    from hepc.observe.status import render_lines

    if json_out:
        print(json.dumps(st, indent=None if compact else 1), flush=True)
    else:
        print("\n".join(render_lines(st, stamp=stamp)), flush=True)


def _watch(snapshot, json_out: bool) -> None:
    """Rich Live on a terminal; elsewhere (or with --json) one block (JSON object per line) per refresh."""
    from rich.console import Console

    console = Console()
    if console.is_terminal and not json_out:
        from rich.live import Live
        from rich.text import Text

        from hepc.observe.status import render_lines

        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                st = snapshot()
                live.update(Text("\n".join(render_lines(st, stamp=True))), refresh=True)
                if _complete(st):
                    return
                time.sleep(WATCH_EVERY_S)
    first = True
    while True:
        st = snapshot()
        if not first and not json_out:
            print(flush=True)
        first = False
        _show(st, json_out, stamp=True, compact=True)
        if _complete(st):
            return
        time.sleep(WATCH_EVERY_S)


def register(app) -> None:
    """Add `status` to the hepc Typer app (hepc.cli calls this at its end)."""
    from typing import Annotated

    import typer

    from hepc.cli.app import JsonOpt, Overrides, StoreOpt, user_errors

    existing = {c.name or getattr(c.callback, "__name__", None) for c in app.registered_commands}
    if "status" in existing:
        return  # already registered

    @app.command()
    @user_errors
    def status(
        spec: Annotated[
            str | None, typer.Argument(help="Also show this spec's graph progress and an ETA.")
        ] = None,
        overrides: Overrides = None,
        store: StoreOpt = None,
        watch: Annotated[
            bool, typer.Option("--watch", help="Redraw every 2 s until Ctrl-C (or until SPEC's graph is committed).")
        ] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """What a store is doing now: leases, live progress of running steps, graph progress and ETA."""
        code = status_command(spec, overrides, store, watch, json_out)
        if code:
            raise typer.Exit(code)
