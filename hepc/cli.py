"""The `hepc` command line: a thin Typer app. Results go to stdout, narration and progress to stderr.

Every user-facing failure prints one located line per problem and exits 2; Ctrl-C exits 130.
"""

from __future__ import annotations

from hepc import early_signals

early_signals.install()  # before the heavy imports below: a SIGTERM now exits 130, not 143

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from functools import wraps  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402

from hepc.errors import HepcError  # noqa: E402
from hepc.wording import count  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="hepc: compile and run hyper-epoch pretraining (q0) populations.",
    pretty_exceptions_enable=False,
)

SpecArg = Annotated[str, typer.Argument(help="Population spec (YAML).", show_default=False)]
Overrides = Annotated[
    Optional[list[str]], typer.Argument(help="key=value overrides, e.g. population.cycles=12 prior.budgets=[1,4,all]"
                                        " (run: more specs may follow, each with its own overrides)")
]
StoreOpt = Annotated[
    Optional[str], typer.Option("--store", help="Store folder (default: $HEPC_STORE, runtime.store, or runs/).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
ElsewhereOpt = Annotated[
    bool,
    typer.Option(
        "--data-elsewhere",
        help="The data lives on another machine: a source not found here is a warning, not an error (exit 2).",
    ),
]
MembersOpt = Annotated[
    bool, typer.Option("--members", help="Also print every member (snapshot) in a table; --json always has them.")
]
RefDataOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--reference-data",
        help="Spec of single models trained on more data (data efficiency); repeat it to join several specs "
        "(SPEC::key=value overrides one of them).",
    ),
]
SPECS_HELP = "each followed by its own key=value overrides (or SPEC::key=value), e.g. q0.yaml population.cycles=8"
FamilyOpt = Annotated[
    Optional[list[str]],
    typer.Option("--family", help="NAME=SPEC: SPEC belongs to family NAME (repeat to join several specs into one, "
                 "tuned on val together); these families come first, the first is the baseline."),
]
def _check_split(value: str) -> str:
    if value not in ("val", "test"):
        raise typer.BadParameter(f"must be val or test (got {value!r})")
    return value


SplitOpt = Annotated[
    str, typer.Option("--split", help="Where figures are read: val (where everything is chosen) or test.",
                      callback=_check_split)
]


def _split_result(compute):
    """A comparison whose families lack the split asked for is one located error, not a traceback."""
    from hepc.errors import SpecError
    from hepc.report.families import MissingSplit

    try:
        return compute()
    except MissingSplit as e:
        raise SpecError(f"--split: {e}") from None


def _plain_flags() -> None:
    """Rich help shows the value type beside every option, so a flag (`--json`, `--help`) reads
    `<bool>` as if it took a value: show nothing there for flags."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "plain_flags", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich.plain_flags = True
    TyperOption.display_type_rich = display_type_rich


_plain_flags()


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def user_errors(fn):
    """Turn HepcError into located messages + exit 2, and Ctrl-C into exit 130, never a traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HepcError as e:
            for p in e.problems:
                _err(f"error: {p}")
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            _ignore_signals()  # a second Ctrl-C or SIGTERM must not cut the exit short (or make it 143)
            _err("interrupted: finished steps are committed; `hepc run` resumes")
            _exit_now(130)
        except BrokenPipeError:  # stdout closed early (`hepc diff A B | head`): the reader has what it wanted
            _quiet_stdout()
            _exit_now(0)
        except OSError as e:  # a disk or file problem outside a located check: one line, never a traceback
            from hepc.errors import printable
            from hepc.safe_io import os_error_message

            _err(f"error: {printable(os_error_message(e))}")
            raise typer.Exit(2) from None

    return wrapper


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail on a closed pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _ignore_signals() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _exit_now(code: int) -> None:
    """Exit at once once an interrupt has been handled (leases released, record written): the
    interpreter's own shutdown could be cut by yet another signal and end as -SIGINT."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _stdout():
    """Rich console for results: tables keep their width when stdout is a file or a pipe."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    return console if console.is_terminal else Console(soft_wrap=True, width=160)


def _load(spec: str, overrides, *, strict_data: bool = False, data_elsewhere: bool | None = None):
    """The loaded spec and its graph. strict_data: data that is not here is an error (located, exit 2).
    validate and plan pass their --data-elsewhere flag as `data_elsewhere`: then data that lives
    elsewhere (the flag, or the spec's runtime.data_elsewhere) is only a warning. `run` never passes it."""
    from hepc.compile import compile_spec
    from hepc.spec.load import load_spec

    loaded = load_spec(spec, overrides or [])
    if data_elsewhere is not None and (data_elsewhere or loaded.spec.runtime.data_elsewhere):
        strict_data = False
    return loaded, compile_spec(loaded, strict_data=strict_data)


def _store(cli_value: Optional[str], loaded):
    from hepc.store import Store, resolve_store_path

    return Store(resolve_store_path(cli_value, loaded.spec.runtime.store))


def _warn(compiled) -> None:
    for w in compiled.warnings:
        _err(f"warning: {w}")


def _check_extras(loaded) -> None:
    """Optional packages the spec's runtime asks for (runtime.tensorboard): exit 2 naming the extra."""
    from hepc.execute.tensorboard import check

    check(loaded)


def _check_inputs(loaded, compiled) -> None:
    """Input problems known before any training (hepc/data/checks.py): errors exit 2, located. Data
    that lives on another machine (not here at all) stays a warning; data that is here and bad is an error."""
    from hepc.compile import UNAVAILABLE
    from hepc.data.checks import loaded_input_problems
    from hepc.errors import SpecError

    errors, warnings = loaded_input_problems(loaded)
    for w in warnings:
        _err(f"warning: {w}")
    if errors and not any(w.startswith(UNAVAILABLE) for w in compiled.warnings):
        raise SpecError(errors)


def _memory(loaded, compiled, *, refuse: bool) -> dict:
    """The estimated peak memory per device of each step kind (hepc/memory.py, no torch). refuse: a cycle
    that cannot fit the device is an error (exit 2, located at the field to change); else a warning."""
    from hepc.errors import Problem, SpecError
    from hepc.memory import memory_report

    report = memory_report(compiled)
    if report["problems"]:
        problems = [Problem(loaded.where(field), field, message) for field, message in report["problems"]]
        if refuse:
            raise SpecError(problems)
        for p in problems:
            _err(f"warning: {p}")
    return report


@app.command()
@user_errors
def validate(spec: SpecArg, overrides: Overrides = None, data_elsewhere: ElsewhereOpt = False) -> None:
    """Check a spec (and overrides) and its data without running anything."""
    loaded, compiled = _load(spec, overrides, strict_data=True, data_elsewhere=data_elsewhere)
    _check_extras(loaded)
    _warn(compiled)
    _check_inputs(loaded, compiled)
    _memory(loaded, compiled, refuse=True)
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
    from hepc.plan import SYMBOLS, make_plan

    loaded, compiled = _load(spec, overrides, strict_data=True, data_elsewhere=data_elsewhere)
    _warn(compiled)
    _check_inputs(loaded, compiled)
    memory = _memory(loaded, compiled, refuse=False)
    the_store = _store(store, loaded)
    the_plan = make_plan(compiled, the_store)
    from hepc.throughput import plan_estimate, plan_line

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
    from hepc.cli_data import plan_data_lines  # split_lines, plus a dry-pass summary of a small unbuilt corpus
    from hepc.memory import report_lines
    from hepc.plan import schedule_lines

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
        Optional[int],
        typer.Option("--jobs", "-j", min=1, help="Steps at once, each in a worker process (default: one per GPU, else 1)."),
    ] = None,
    backend: Annotated[
        Optional[str], typer.Option("--backend", help="local (this machine) or ray (a Ray cluster; needs the ray extra).")
    ] = None,
    address: Annotated[
        Optional[str], typer.Option("--address", help="Ray cluster address (auto, HOST:PORT); default $RAY_ADDRESS.")
    ] = None,
    members: MembersOpt = False,
) -> None:
    """Run every step that is not in the store yet, then print the results.

    Several specs (each followed by its own key=value overrides) run one after the other into one store, then their comparison is printed as `hepc compare` prints it: the first is the baseline, figures on test when every spec has a test split (chosen on val), else on val."""  # noqa: E501
    from hepc.cli_specs import spec_args

    refs = spec_args([spec, *(overrides or [])])
    flags = _run_flags(jobs, backend, address)
    if len(refs) == 1:
        _run_one(refs[0].path, list(refs[0].overrides), store, flags, json_out=json_out, quiet=quiet, members=members)
        return
    named = []
    for ref in refs:
        named.append(_run_one(ref.path, list(ref.overrides), store, flags, json_out=False, quiet=quiet, members=None))
    from hepc.cli_specs import check_same_splits, display_names
    from hepc.report.families import Family
    from hepc.report.side_by_side import compare_results, render_table

    names = display_names([res["spec"] for res in named], refs)
    split = "test" if all(Family.from_results(n, [r]).has_split("test") for n, r in zip(names, named)) else "val"
    check_same_splits(list(zip(names, named)), split)
    result = compare_results(list(zip(names, named)), None, split)
    if json_out:
        print(json.dumps(result, indent=1))
    else:
        render_table(result, _stdout())


def _run_one(spec: str, overrides: list[str], store: Optional[str], flags: dict, *, json_out: bool, quiet: bool,
             members: Optional[bool]) -> dict:
    """Run one spec (see `run`); print its results unless `members` is None; return them."""
    from hepc.errors import StepFailed
    from hepc.execute.driver import check_committed, execute
    from hepc.plan import make_plan
    from hepc.results import collect, render
    from hepc.verify import Damaged

    t0 = time.time()
    loaded, compiled = _load(spec, overrides, strict_data=True)
    _check_extras(loaded)
    _check_inputs(loaded, compiled)  # the same data checks as validate: exit 2 before anything is written
    _memory(loaded, compiled, refuse=True)  # a cycle that cannot fit its device: exit 2, nothing written
    the_store = _store(store, loaded)
    the_store.open_for_writing()  # a folder that is not a store (or is not writable) is refused here
    damaged = check_committed(compiled.graph, the_store)  # damaged objects are named, quarantined, recomputed
    the_plan = make_plan(compiled, the_store)
    if not quiet:
        _err(the_plan.summary_line())
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
            _err(f"warning: damaged object {e.damage}; moved to {moved}; recomputing it")
            execute(compiled, the_store, runtime, resolved, quiet=quiet)
    if members is not None:
        if json_out:
            print(json.dumps(results, indent=1))
        else:
            render(results, _stdout(), members=members)
    if not quiet:
        _err(f"done in {time.time() - t0:.1f}s (store: {the_store.root})")
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


def _run_flags(jobs: Optional[int], backend: Optional[str], address: Optional[str]) -> dict:
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


@app.command()
@user_errors
def results(
    spec: SpecArg,
    overrides: Overrides = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    members: MembersOpt = False,
    split: SplitOpt = "val",
) -> None:
    """Print a finished population's ensembles, loss curve and best member (every member with --members), on val or on test (--split test: the same choices, made on val, read on test)."""  # noqa: E501
    from hepc.results import collect, on_split, render

    loaded, compiled = _load(spec, overrides)
    res = on_split(collect(compiled, _store(store, loaded)), split)
    if json_out:
        print(json.dumps(res, indent=1))
    else:
        render(res, _stdout(), members=members)


@app.command()
@user_errors
def diff(
    specs: Annotated[list[str], typer.Argument(help=f"Two specs, A then B, {SPECS_HELP}.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Changed fields (A's value → B's) and the steps two specs share or not, by kind."""
    from hepc.cli_specs import spec_args
    from hepc.diff import diff as diff_specs
    from hepc.errors import SpecError

    refs = spec_args(specs)
    if len(refs) != 2:
        raise SpecError(f"diff compares two specs, A and B (got {count(len(refs), 'spec')}: {', '.join(r.label for r in refs)})")
    (la, ca), (lb, cb) = (_load(r.path, r.overrides) for r in refs)
    d = diff_specs(la, ca, lb, cb)
    if json_out:
        print(json.dumps(d, indent=1))
        return
    if not d["changed"]:
        print("no field differs")
    for c in d["changed"]:
        print(f"~ {c['field']}: {json.dumps(c['old'])} → {json.dumps(c['new'])}")
    kinds = sorted(set(d["steps"]["shared"]) | set(d["steps"]["only_a"]) | set(d["steps"]["only_b"]))
    kind_width = max([6, *(len(k) for k in kinds)])  # 6 unless a tokenizer step is there
    for k in kinds:
        print(
            f"  {k:<{kind_width}} shared {d['steps']['shared'].get(k, 0):>5}   only in A {d['steps']['only_a'].get(k, 0):>5}"
            f"   only in B {d['steps']['only_b'].get(k, 0):>5}"
        )
    ep = d["epochs"]
    print(
        f"epochs: A {ep['a']:g}, B {ep['b']:g}; B needs {count(ep['only_b'], 'epoch')} of training A does not have; "
        f"A has {count(ep['only_a'], 'epoch')} B does not use"
    )


def _collect(ref, store: Optional[str]):
    """(loaded spec, results) of a `hepc.cli_specs.SpecRef`: a spec path and its own overrides."""
    from hepc.results import collect

    loaded, compiled = _load(ref.path, ref.overrides)
    return loaded, collect(compiled, _store(store, loaded))


def _collect_named(specs: list[str], store: Optional[str]) -> list[tuple]:
    """(loaded, results, display name) of each spec of `compare`/`report`, with its own overrides;
    a spec given with overrides, or twice, gets a name that tells them apart."""
    from hepc.cli_specs import display_names, spec_args

    refs = spec_args(specs)
    collected = [_collect(r, store) for r in refs]
    names = display_names([loaded.spec.name for loaded, _ in collected], refs)
    return [(loaded, res, name) for (loaded, res), name in zip(collected, names)]


def _families(specs: list[str] | None, family: list[str] | None, store: Optional[str], split: str) -> list[tuple]:
    """(name, [results], [loaded]) of each family of `compare`/`report`: the `--family NAME=SPEC` groups in
    order, then each positional spec; refused when their val (or `split`) tokens differ."""
    from hepc.cli_specs import check_same_splits, family_args

    groups: dict[str, tuple[list, list]] = {}
    for name, ref in family_args(family):
        loaded, res = _collect(ref, store)
        groups.setdefault(name, ([], []))[0].append(res)
        groups[name][1].append(loaded)
    out = [(name, results, loaded) for name, (results, loaded) in groups.items()]
    out += [(name, [res], [loaded]) for loaded, res, name in (_collect_named(specs, store) if specs else [])]
    if len(out) < 1:
        from hepc.errors import SpecError

        raise SpecError("give at least one spec (positional) or --family NAME=SPEC")
    check_same_splits([(name, res) for name, results, _ in out for res in results], split)
    return out


def _references(specs: list[str] | None, store: str | None) -> list | None:
    """Results of the `--reference-data` specs, joined by `hepc compare` into one token envelope."""
    from hepc.cli_specs import spec_args

    return [_collect(r, store)[1] for s in specs for r in spec_args([s])] if specs else None


@app.command()
@user_errors
def compare(
    specs: Annotated[
        Optional[list[str]],
        typer.Argument(help=f"Specs to compare, {SPECS_HELP}; the first family is the baseline.", show_default=False),
    ] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Write the curves as a PNG here.")] = None,
    reference_data: RefDataOpt = None,
    family: FamilyOpt = None,
    split: SplitOpt = "val",
) -> None:
    """Families of specs side by side: epochs-to-match, matched-K ratio, loss gaps, paired seeds.

    A spec's sweep is a family of configurations (seeds apart); --family NAME=SPEC puts several specs in one. Each family's curve takes, at every budget, its configuration of lowest val loss; figures are on --split (test: nothing is chosen on it). The first family (--family ones first) is the baseline."""  # noqa: E501
    from hepc.report.side_by_side import compare_results, render_table

    families = _families(specs, family, store, split)
    reference = _references(reference_data, store)
    result = _split_result(lambda: compare_results([(name, results) for name, results, _ in families], reference, split))
    if plot:
        from hepc.report.plots import plot_curves

        plot_curves(result["curves"], plot, f"{split} loss vs budget (K = all, weights from held-out; chosen on val)")
    if json_out:
        print(json.dumps(result, indent=1))
    else:
        render_table(result, _stdout())


@app.command()
@user_errors
def report(
    specs: Annotated[
        list[str],
        typer.Argument(help=f"Specs to report, {SPECS_HELP}; with several, the first is the baseline.", show_default=False),
    ],
    out: Annotated[str, typer.Option("--out", help="Folder for report.html, curves.png, summary.json.")],
    store: StoreOpt = None,
    reference_data: RefDataOpt = None,
    family: FamilyOpt = None,
    split: SplitOpt = "val",
    force: Annotated[
        bool, typer.Option("--force", help="Replace report.html, summary.json, curves.png in --out (nothing else).")
    ] = False,
) -> None:
    """A self-contained HTML report: resolved specs, curves, comparison table, members, learned weights."""
    from hepc.report.render import render_report
    from hepc.report.side_by_side import compare_results
    from hepc.spec.load import to_yaml

    families = _families(specs, family, store, split)
    reference = _references(reference_data, store)
    result = _split_result(lambda: compare_results([(name, results) for name, results, _ in families], reference, split))
    context = {
        "title": "hepc: " + " vs ".join(name for name, _, _ in families),
        "split": split,
        "specs": [{"name": name, "text": to_yaml(l.spec)} for name, _, loaded in families for l in loaded],
        "comparisons": result["comparisons"],
        "curves": {k: [tuple(p) for p in v] for k, v in result["curves"].items()},
        "curves_title": f"{split} loss vs budget (K = all, weights from held-out; configurations chosen on val)",
        "populations": [res for _, results, _ in families for res in results],
        "data_efficiency": result["data_efficiency"],
        "summary": {"finals": result["finals"], "baseline": result["baseline"], "split": split,
                    "warnings": result["warnings"]},
    }
    path = render_report(context, out, replace=force)
    print(path)


@app.command()
@user_errors
def new(
    budget: Annotated[float, typer.Option("--budget", help="Epoch budget B (P·C·E).")],
    template: Annotated[str, typer.Option("--template", help="Template in templates/recipes/.")] = "q0",
    saturation: Annotated[
        float, typer.Option("--saturation", help="Epochs at which a lone model saturates on this data (S).")
    ] = 16.0,
    name: Annotated[Optional[str], typer.Option("--name", help="Spec name (default: TEMPLATE-bB).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Write the spec here instead of stdout.")] = None,
    data: Annotated[
        Optional[str],
        typer.Option("--data", metavar="FROM_SPEC", help="Copy the data section of this spec (paths rebased onto --out's folder)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Render a ready spec for a budget from a recipe template (rules in hepc/recipes.py)."""
    import tempfile
    from pathlib import Path

    from hepc.recipes import render
    from hepc.spec.load import load_spec

    target = Path(out) if out else None
    folder = target.parent if target else Path.cwd()
    if not folder.is_dir():
        raise HepcError(f"--out {out}: folder {folder} does not exist")
    if target is not None and (target.is_dir() and not target.is_symlink()):
        raise HepcError(f"--out {out} is a folder: give a file name for the spec")
    if target is not None and os.path.lexists(target) and not force:
        raise HepcError(f"--out {out} exists: hepc new replaces nothing unless told to (--force)")
    text = render(budget, saturation, template, name, data_from=data, out_dir=folder)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=folder, delete=False) as f:
        f.write(text)
    try:
        load_spec(f.name)  # a template that renders an invalid spec is a bug worth a located message
    except BaseException:
        Path(f.name).unlink()  # nothing is written on error
        raise
    if target:
        Path(f.name).replace(target)
    else:
        Path(f.name).unlink()
    if target:
        print(target)
    else:
        print(text, end="")


@app.command()
def schema() -> None:
    """Print the JSON schema of a population spec."""
    from hepc.spec.schema import spec_schema

    print(json.dumps(spec_schema(), indent=1))


from hepc.cli_store import register  # noqa: E402  (verify, gc)

register(app)
from hepc import cli_status  # noqa: E402  (status)

cli_status.register(app)
from hepc import cli_use  # noqa: E402  (sample, score, export, eval)

cli_use.register(app)
from hepc import cli_data  # noqa: E402  (data)

cli_data.register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # a second signal that arrived while the first one was being handled
        _ignore_signals()
        _exit_now(130)


if __name__ == "__main__":
    main()
