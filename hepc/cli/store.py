"""Store maintenance commands: `hepc verify [SPEC] [--store] [--adopt]`, `hepc gc [SPEC...] [--yes] [--store]`
and `hepc unlock KEY... [--store]`.

Plain functions (`verify_command`, `gc_command`) that return an exit code, plus `register(app)`,
which `hepc.cli` calls at its end to add them to the Typer app. (No `from __future__ import
annotations` here: the Typer signatures are built inside `register` from hepc.cli's option types.)
"""

import json
import sys

from hepc.errors import HepcError
from hepc.wording import count


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _open_store(cli_value: str | None, spec_store: str | None = None, *, adopt: bool = False):
    """The store at the resolved path; it must carry the store marker (an unrelated folder is never
    written to or deleted from). `adopt` accepts a marker-less store of an older hepc (see `adopt`)."""
    from hepc.store.layout import resolve_store_path
    from hepc.store.objects import Store

    root = resolve_store_path(cli_value, spec_store)
    if root.exists() and not root.is_dir():
        raise HepcError(f"{root}: store path exists and is not a folder")
    the_store = Store(root)
    if not root.exists() or not any(root.iterdir()):
        print(f"store {root}: empty (nothing has run into it yet; `hepc run` makes it a store)", file=sys.stderr)
        return the_store  # the rule of every command: a missing or empty folder is a store holding nothing
    if not adopt:
        the_store.require_store()
    return the_store


def _adopt(the_store) -> None:
    """Write the marker into a store made by an older hepc, after checking that the folder holds
    nothing but a store's folders (so an unrelated folder is never adopted)."""
    from hepc.store.layout import MARKER, SUBDIRS
    from hepc.store.verify import INDEX

    if the_store.marker_problem() is None:
        return
    if (the_store.root / MARKER).exists():
        the_store.require_store()  # a damaged marker: say so rather than overwrite it
    unknown = sorted(e.name for e in the_store.root.iterdir() if e.name not in (*SUBDIRS, INDEX))
    if unknown or not (the_store.root / "objects").is_dir():
        what = f"it holds {', '.join(unknown[:3])}" if unknown else "it has no objects/ folder"
        raise HepcError(f"{the_store.root}: does not look like an hepc store ({what}); not adopted")
    if the_store.layout_problems():
        raise HepcError(next(iter(the_store.layout_problems().values())) + "; not adopted")
    the_store.create_marker()
    print(f"adopted {the_store.root} as an hepc store (wrote {MARKER})", file=sys.stderr)


def _compile(spec: str, overrides=(), *, strict_data: bool = False):
    from hepc.compile.compiler import compile_spec
    from hepc.spec.load import load_spec

    loaded = load_spec(spec, list(overrides or []))
    return loaded, compile_spec(loaded, strict_data=strict_data)


# --------------------------------------------------------------------------- verify


def verify_command(
    spec: str | None, overrides=None, store: str | None = None, json_out: bool = False, adopt: bool = False,
    *, repair: bool = False, scrub: bool = False,
) -> int:
    """Re-hash every object of the store (or of one spec's graph) against its recorded digests, and
    check every mid-cycle checkpoint in work/ against its own. Every signature that vouched for a
    damaged object is dropped, so the next `hepc run` re-hashes, quarantines and recomputes it.
    `repair`: move the damaged objects (and checkpoints) to quarantine/ now, and with a SPEC run it to
    recompute them. `scrub`: also rebuild the signature index from what was hashed (entries of objects
    no longer in the store dropped) and report the rate. Returns 1 if anything is (or was) damaged
    and not repaired, 0 if not (user errors raise HepcError → exit 2). `adopt`: mark an older hepc's store."""
    import time

    from hepc.store.verify import check_checkpoints, verify_objects

    t0 = time.perf_counter()
    missing: list[str] = []
    if spec is not None:
        loaded, compiled = _compile(spec, overrides)
        for w in compiled.warnings:
            print(f"warning: {w}", file=sys.stderr)
        the_store = _open_store(store, loaded.spec.runtime.store, adopt=adopt)
        objects = []
        for step in compiled.graph.order():
            found = the_store.find(step)
            if found is None:
                missing.append(f"{step.kind}/{step.dirname}")
            else:
                objects.append(found)
        checked, damaged = verify_objects(the_store, objects, scrub=scrub)
    else:
        the_store = _open_store(store, adopt=adopt)
        checked, damaged = verify_objects(the_store, scrub=scrub)
    checkpoints = check_checkpoints(the_store)
    seconds = time.perf_counter() - t0
    if adopt and not damaged:
        _adopt(the_store)
    from hepc.store.gc import tree_bytes

    size = sum(tree_bytes(p) for p in checked)
    moved = _repair(the_store, damaged, checkpoints) if repair and (damaged or checkpoints) else []
    if json_out:
        print(json.dumps({
            "store": str(the_store.root),
            "checked": len(checked),
            "bytes": size,
            "seconds": round(seconds, 3),
            "damaged": [{"object": d.label, "path": str(d.path), "problems": list(d.problems)} for d in damaged],
            "not_computed": missing,
            "checkpoints": [{"path": str(p), "problem": why} for p, why in checkpoints],
            "quarantined": moved,
        }, indent=1))
    else:
        for d in damaged:
            print(f"damaged {d}")
        for p, why in checkpoints:
            print(f"damaged checkpoint {p}: {why} (the next `hepc run` discards it and restarts that cycle)")
        scope = f"of {spec} " if spec else ""
        if not damaged:
            status = "all intact"
        elif repair:
            status = f"{len(damaged)} damaged, moved to quarantine/"
        else:
            status = (f"{len(damaged)} damaged (`hepc run` moves them to quarantine/ and recomputes them; "
                      "`hepc verify --repair` moves them now)")
        extra = f"; {count(len(missing), 'step')} not computed yet" if missing else ""
        rate = f", {_human(size / seconds)}/s" if seconds > 0 else ""
        verb = "scrubbed" if scrub else "verified"
        print(f"{verb} {count(len(checked), 'object')} {scope}({_human(size)}) in {the_store.root} in "
              f"{seconds:.1f} s{rate}: {status}{extra}")
        if adopt and damaged:
            print("not adopted: repair or remove the damaged objects first", file=sys.stderr)
    if moved and spec is not None:  # recompute what was moved aside: the spec's run, as `hepc run` does
        from hepc.cli.run import run_one

        print(f"recomputing with `hepc run {spec}`", file=sys.stderr)
        run_one(spec, list(overrides or []), store, {}, json_out=False, quiet=False, members=None)
        return 0
    if moved:
        print("the next `hepc run` of a spec that uses them recomputes them", file=sys.stderr)
    return 1 if damaged or checkpoints else 0


def _repair(the_store, damaged, checkpoints) -> list[str]:
    """Move damaged objects and checkpoints to quarantine/ (kept for inspection); what moved where."""
    the_store.open_for_writing()
    moved = []
    for d in damaged:
        dest = the_store.quarantine(d.path)
        if dest is not None:
            moved.append(str(dest))
    for ckpt, _why in checkpoints:
        dest = the_store.set_aside(ckpt)
        moved.append(str(dest))
    the_store.save_index()
    return moved


# --------------------------------------------------------------------------- gc


def gc_command(specs=None, yes: bool = False, store: str | None = None, json_out: bool = False) -> int:
    """Dry run by default: list what is not reachable from the recorded (or named) specs and its size;
    with yes=True, remove it in two phases (trash, then delete)."""
    from hepc.cli.specs import spec_args
    from hepc.store.gc import collect, garbage, reachable

    named = []
    spec_store = None
    for ref in spec_args(list(specs or [])):  # SPEC [key=value ...] ..., as every command reads them
        loaded, compiled = _compile(ref.path, ref.overrides, strict_data=True)  # exact keys before deleting anything
        named.append(compiled)
        spec_store = spec_store or loaded.spec.runtime.store
    the_store = _open_store(store, spec_store)
    reach = reachable(the_store, named)
    if reach.records == 0 and not named and any(the_store.objects.glob("*/*")):
        raise HepcError(
            f"{the_store.root}: no run records, so nothing is known to be in use; "
            "name the specs whose objects to keep (`hepc gc SPEC...`)"
        )
    notes = list(reach.notes)
    items = garbage(the_store, reach, notes)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    total = sum(i.bytes for i in items)
    result = None
    if yes and the_store.has_marker():  # an empty folder holds nothing to remove: nothing is written there
        result = collect(the_store, items, named)
    if json_out:
        print(json.dumps({
            "store": str(the_store.root),
            "dry_run": not yes,
            "items": [{"kind": i.kind, "path": str(i.path), "bytes": i.bytes, "why": i.why} for i in items],
            "bytes": total,
            "reachable_keys": len(reach.keys),
            "keep_all": reach.keep_all,
            "records": reach.records,
            "specs": sorted(reach.specs),
            "removed": [str(i.path) for i in result.removed] if result else [],
            "restored": result.restored if result else [],
        }, indent=1))
        return 0
    head = "removed" if yes else "would remove"
    for i in items:
        if i.kind != "cache":  # verification-cache entries are counted, not listed
            print(f"{head} {i.kind:<10} {i.label:<40} {_human(i.bytes):>9}  {i.why}")
    nouns = {"object": "object", "work": "work folder", "staging": "staging folder", "quarantine": "quarantine folder",
             "trash": "trash folder", "lease": "lease leftover", "cache": "cache entry"}
    counts: dict[str, list] = {}
    for i in items:
        c = counts.setdefault(i.kind, [0, 0])
        c[0] += 1
        c[1] += i.bytes
    parts = []
    for kind, (n, b) in counts.items():
        noun = nouns.get(kind, kind)
        noun = noun if n == 1 else (noun[:-1] + "ies" if noun.endswith("y") else noun + "s")
        parts.append(f"{n} {noun} ({_human(b)})")
    print(f"{head}: {', '.join(parts) or 'nothing'}; {_human(total)} in all")
    if result and result.restored:
        print(f"kept {count(len(result.restored), 'object')} that a run started meanwhile needs: {', '.join(result.restored)}")
    print(
        f"kept everything reachable from {count(reach.records, 'run record')}"
        + (f" and {count(len(named), 'spec')} named here" if named else "")
        + (" (everything: see the warning above)" if reach.keep_all else "")
        + ("" if yes or not items else "; run `hepc gc --yes` to delete")
    )
    return 0


# --------------------------------------------------------------------------- unlock


def unlock_command(keys: list[str], store: str | None = None) -> int:
    """Remove the leases of the steps whose keys start with `keys` (a suspect lease that no process
    holds: `hepc run` and `hepc gc` name it and this command). Never needed for a dead holder on
    this host or a heartbeat older than the timeout: those are taken over automatically."""
    from hepc.store.lease import describe, force_remove, held_here, read_lease

    the_store = _open_store(store)
    folder = the_store.root / "leases"
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    for key in keys:
        if len(key) < 6 or not all(c in "0123456789abcdef" for c in key):
            raise HepcError(f"{key!r}: give at least 6 hex digits of a step key (as `hepc plan` shows them)")
        hits = [n for n in names if n.startswith(key)]
        if not hits:
            raise HepcError(f"no lease of a step {key}… in {folder}")
        if len(hits) > 1:
            raise HepcError(f"{key} matches {len(hits)} leases ({', '.join(h[:12] for h in hits[:5])}"
                            f"{', …' if len(hits) > 5 else ''}): give enough digits to name one; nothing removed")
        (name,) = hits
        info = read_lease(folder / name)
        if info is not None and held_here(info):
            raise HepcError(f"lease {name[:12]} is held by a running process ({describe(info)}): stop that run "
                            "(Ctrl-C) instead; nothing removed")
        holder = force_remove(folder / name)
        if holder is not None:
            print(f"removed lease {name[:12]} ({describe(holder)})")
    return 0


# --------------------------------------------------------------------------- registration


def register(app) -> None:
    """Add `verify` and `gc` to the hepc Typer app (hepc.cli calls this at its end)."""
    from typing import Annotated

    import typer

    from hepc.cli.app import JsonOpt, Overrides, StoreOpt, user_errors

    existing = {c.name or getattr(c.callback, "__name__", None) for c in app.registered_commands}
    if {"verify", "gc", "unlock"} <= existing:
        return  # already registered (idempotent: tests may register before hepc.cli does)

    def _exit(code: int) -> None:
        if code:
            raise typer.Exit(code)

    @app.command()
    @user_errors
    def verify(
        spec: Annotated[str | None, typer.Argument(help="Only the objects of this spec's graph.")] = None,
        overrides: Overrides = None,
        store: StoreOpt = None,
        json_out: JsonOpt = False,
        adopt: Annotated[
            bool, typer.Option("--adopt", help="Mark a store written by an older hepc (no marker) as a store, if intact.")
        ] = False,
        repair: Annotated[
            bool, typer.Option("--repair", help="Move damaged objects to quarantine/ now; with SPEC, run it to recompute them.")
        ] = False,
        scrub: Annotated[
            bool, typer.Option("--scrub", help="Also rebuild the signature index from what was hashed; report the rate.")
        ] = False,
    ) -> None:
        """Re-hash committed objects against their recorded digests; list the damaged ones (exit 1 if any)."""
        _exit(verify_command(spec, overrides, store, json_out, adopt, repair=repair, scrub=scrub))

    @app.command()
    @user_errors
    def gc(
        specs: Annotated[
            list[str] | None, typer.Argument(
                help="Specs whose objects to keep besides the recorded ones, each followed by its key=value overrides.")
        ] = None,
        yes: Annotated[bool, typer.Option("--yes", help="Delete (default: a dry run that only lists).")] = False,
        store: StoreOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Remove objects and work not reachable from the specs recorded in the store (or named here)."""
        _exit(gc_command(specs, yes, store, json_out))

    @app.command()
    @user_errors
    def unlock(
        keys: Annotated[list[str], typer.Argument(help="Step keys (at least 6 hex digits) whose leases to remove.")],
        store: StoreOpt = None,
    ) -> None:
        """Remove a suspect lease that no process holds (`hepc run` and `hepc gc` name it)."""
        _exit(unlock_command(keys, store))

