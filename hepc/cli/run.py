"""`hepc validate`, `hepc plan` and `hepc run`: check a spec, show what a run would do, run it."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from hepc.cli.app import (
    ElsewhereOpt,
    JsonOpt,
    MembersOpt,
    Overrides,
    SpecArg,
    StoreOpt,
    app,
    check_extras,
    check_inputs,
    check_memory,
    err,
    load,
    open_store,
    stdout,
    user_errors,
    warn,
)
from hepc.wording import count


@app.command()
@user_errors
def validate(spec: SpecArg, overrides: Overrides = None, data_elsewhere: ElsewhereOpt = False) -> None:
    """Check a spec (and overrides) and its data without running anything."""
    loaded, compiled = load(spec, overrides, strict_data=True, data_elsewhere=data_elsewhere)
    check_extras(loaded)
    warn(compiled)
    check_inputs(loaded, compiled)
    check_memory(loaded, compiled, refuse=True)
    t = compiled.totals
    pops = compiled.populations
    snapshots = sum(p.totals["members"] for p in pops)
    what = f"{count(len(pops), 'population')}, " if len(pops) > 1 else ""
    print(
        f"{spec}: ok ({what}{count(len(compiled.graph), 'step')}, {count(snapshots, 'snapshot')}, "
        f"{count(t['epochs'], 'epoch')}, {count(max(p.totals['params'] for p in pops), 'parameter')})"
    )


@app.command()
@user_errors
def plan(
    spec: SpecArg,
    overrides: Overrides = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    data_elsewhere: ElsewhereOpt = False,
) -> None:
    """Show what `hepc run` would do: each step cached (=), new (+), resumable (~) or failed before (!)."""
    from hepc.compile.plan import SYMBOLS, make_plan

    loaded, compiled = load(spec, overrides, strict_data=True, data_elsewhere=data_elsewhere)
    warn(compiled)
    check_inputs(loaded, compiled)
    memory = check_memory(loaded, compiled, refuse=False)
    the_store = open_store(store, loaded)
    the_plan = make_plan(compiled, the_store)
    from hepc.observe.estimate import plan_estimate, plan_line

    estimate = plan_estimate(the_plan, the_store.root, loaded.spec.runtime)  # None: nothing measured
    if json_out:
        print(json.dumps({**the_plan.to_json(), "estimate": estimate, "memory": memory}, indent=1))
        return
    lines = []
    width = max((len(s.step.name) for s in the_plan.steps), default=0)
    kind_width = max([6, *(len(s.step.kind) for s in the_plan.steps)])  # 6 unless a tokenizer step is there
    for s in the_plan.steps:
        extra = f"  {count(s.step.context['epochs'], 'epoch')}" if s.step.kind == "cycle" else ""
        detail = f"  ({s.detail})" if s.detail else ""
        lines.append(f"{SYMBOLS[s.status]} {s.status:<9} {s.step.kind:<{kind_width}} {s.step.name:<{width}}  {s.step.key12}{extra}{detail}")
    from hepc.cli.data import plan_data_lines  # split_lines, plus a dry-pass summary of a small unbuilt corpus
    from hepc.compile.plan import schedule_lines
    from hepc.train.memory import report_lines

    after = schedule_lines(compiled) + report_lines(memory) + plan_data_lines(the_plan, the_store, loaded)
    print("\n".join(lines + after))
    print(the_plan.summary_line())
    if estimate is not None:
        print(plan_line(estimate))


@app.command()
@user_errors
def run(
    spec: SpecArg,
    overrides: Overrides = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", min=1, help="Steps at once, each in a worker process (default: one per GPU, else 1)."),
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="local (this machine) or ray (a Ray cluster; needs the ray extra).")
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (auto, HOST:PORT); default $RAY_ADDRESS.")
    ] = None,
    members: MembersOpt = False,
) -> None:
    """Run every step that is not in the store yet, then print the results.

    Several specs (each followed by its own key=value overrides) run one after the other into one store, then their comparison is printed as `hepc compare` prints it: the first is the baseline, figures on test when every spec has a test split (chosen on val), else on val."""
    from hepc.cli.specs import spec_args

    refs = spec_args([spec, *(overrides or [])])
    flags = _run_flags(jobs, backend, address)
    if len(refs) == 1:
        run_one(refs[0].path, list(refs[0].overrides), store, flags, json_out=json_out, quiet=quiet, members=members)
        return
    named = []
    for ref in refs:
        named.append(run_one(ref.path, list(ref.overrides), store, flags, json_out=False, quiet=quiet, members=None))
    from hepc.cli.specs import check_same_splits, display_names
    from hepc.report.families import Family
    from hepc.report.side_by_side import compare_results, render_table

    names = display_names([res["spec"] for res in named], refs)
    split = "test" if all(Family.from_results(n, [r]).has_split("test") for n, r in zip(names, named)) else "val"
    check_same_splits(list(zip(names, named)), split)
    result = compare_results(list(zip(names, named)), None, split)
    if json_out:
        print(json.dumps(result, indent=1))
    else:
        render_table(result, stdout())


def run_one(spec: str, overrides: list[str], store: str | None, flags: dict, *, json_out: bool, quiet: bool,
             members: bool | None) -> dict:
    """Run one spec (see `run`); print its results unless `members` is None; return them."""
    from hepc.compile.plan import make_plan
    from hepc.errors import StepFailed
    from hepc.execute.driver import check_committed, execute
    from hepc.report.results import collect, render
    from hepc.store.verify import Damaged

    t0 = time.time()
    loaded, compiled = load(spec, overrides, strict_data=True)
    check_extras(loaded)
    check_inputs(loaded, compiled)  # the same data checks as validate: exit 2 before anything is written
    check_memory(loaded, compiled, refuse=True)  # a cycle that cannot fit its device: exit 2, nothing written
    the_store = open_store(store, loaded)
    the_store.open_for_writing()  # a folder that is not a store (or is not writable) is refused here
    damaged = check_committed(compiled.graph, the_store)  # damaged objects are named, quarantined, recomputed
    the_plan = make_plan(compiled, the_store)
    if not quiet:
        err(the_plan.summary_line())
    runtime = loaded.spec.runtime.model_dump()
    runtime.update(flags)
    resolved = loaded.spec.model_dump(mode="json")
    try:
        execute(compiled, the_store, runtime, resolved, quiet=quiet, damaged=damaged, plan=the_plan)
    except StepFailed as e:  # the data cannot give what the spec asks (known only now, e.g. tokens after a BPE)
        raise _located_data_error(loaded, e) or e from None
    for attempt in range(3):
        try:
            results = collect(compiled, the_store)  # the files shown are digest-checked as they are read
            break
        except Damaged as e:  # bytes changed below the filesystem since the start-up pass: repair, then show
            if attempt == 2:
                raise
            moved = the_store.quarantine(e.damage.path)
            err(f"warning: damaged object {e.damage}; moved to {moved}; recomputing it")
            execute(compiled, the_store, runtime, resolved, quiet=quiet)
    if members is not None:
        if json_out:
            print(json.dumps(results, indent=1))
        else:
            render(results, stdout(), members=members)
    if not quiet:
        err(f"done in {time.time() - t0:.1f}s (store: {the_store.root})")
    return results


def _located_data_error(loaded, e: Exception):
    """A step that failed on its data (a DataError naming a spec field) as a SpecError at that field's line."""
    from hepc.data.identity import DataError
    from hepc.errors import Problem, SpecError

    cause = e.__cause__
    if not isinstance(cause, DataError):
        return None
    step = str(e).split(":", 1)[0].removeprefix("step ")  # "corpus NAME (KEY) failed"
    return SpecError([Problem(loaded.where(cause.field), cause.field, f"{cause.message} (step {step})")])


def _run_flags(jobs: int | None, backend: str | None, address: str | None) -> dict:
    """`hepc run` flags that override the spec's runtime section (never part of a key)."""
    from hepc.errors import SpecError

    out: dict = {}
    if jobs is not None:
        out["jobs"] = jobs
    if backend is not None:
        if backend not in ("local", "ray"):
            raise SpecError(f"--backend: {backend!r} is not a backend (local or ray)")
        out["backend"] = backend
    if address is not None:
        out["ray_address"] = address
        out.setdefault("backend", "ray")
    return out
