"""`hepc results`, `hepc diff`, `hepc compare`, `hepc report`: read finished populations back and set them side by side."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from hepc.cli.app import (
    SPECS_HELP,
    FamilyOpt,
    JsonOpt,
    MembersOpt,
    Overrides,
    RefDataOpt,
    SpecArg,
    SplitOpt,
    StoreOpt,
    app,
    load,
    open_store,
    split_result,
    stdout,
    user_errors,
)
from hepc.wording import count


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
    """Print a finished population's ensembles, loss curve and best member (every member with --members), on val or on test (--split test: the same choices, made on val, read on test)."""
    from hepc.report.results import collect, on_split, render

    loaded, compiled = load(spec, overrides)
    res = on_split(collect(compiled, open_store(store, loaded)), split)
    if json_out:
        print(json.dumps(res, indent=1))
    else:
        render(res, stdout(), members=members)


@app.command()
@user_errors
def diff(
    specs: Annotated[list[str], typer.Argument(help=f"Two specs, A then B, {SPECS_HELP}.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Changed fields (A's value → B's) and the steps two specs share or not, by kind."""
    from hepc.cli.specs import spec_args
    from hepc.compile.diff import diff as diff_specs
    from hepc.errors import SpecError

    refs = spec_args(specs)
    if len(refs) != 2:
        raise SpecError(f"diff compares two specs, A and B (got {count(len(refs), 'spec')}: {', '.join(r.label for r in refs)})")
    (la, ca), (lb, cb) = (load(r.path, r.overrides) for r in refs)
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


def _collect(ref, store: str | None):
    """(loaded spec, results) of a `hepc.cli.specs.SpecRef`: a spec path and its own overrides."""
    from hepc.report.results import collect

    loaded, compiled = load(ref.path, ref.overrides)
    return loaded, collect(compiled, open_store(store, loaded))


def _collect_named(specs: list[str], store: str | None) -> list[tuple]:
    """(loaded, results, display name) of each spec of `compare`/`report`, with its own overrides;
    a spec given with overrides, or twice, gets a name that tells them apart."""
    from hepc.cli.specs import display_names, spec_args

    refs = spec_args(specs)
    collected = [_collect(r, store) for r in refs]
    names = display_names([loaded.spec.name for loaded, _ in collected], refs)
    return [(loaded, res, name) for (loaded, res), name in zip(collected, names)]


def _families(specs: list[str] | None, family: list[str] | None, store: str | None, split: str) -> list[tuple]:
    """(name, [results], [loaded]) of each family of `compare`/`report`: the `--family NAME=SPEC` groups in
    order, then each positional spec; refused when their val (or `split`) tokens differ."""
    from hepc.cli.specs import check_same_splits, family_args

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
    from hepc.cli.specs import spec_args

    return [_collect(r, store)[1] for s in specs for r in spec_args([s])] if specs else None


@app.command()
@user_errors
def compare(
    specs: Annotated[
        list[str] | None,
        typer.Argument(help=f"Specs to compare, {SPECS_HELP}; the first family is the baseline.", show_default=False),
    ] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    plot: Annotated[str | None, typer.Option("--plot", help="Write the curves as a PNG here.")] = None,
    reference_data: RefDataOpt = None,
    family: FamilyOpt = None,
    split: SplitOpt = "val",
) -> None:
    """Families of specs side by side: epochs-to-match, matched-K ratio, loss gaps, paired seeds.

    A spec's sweep is a family of configurations (seeds apart); --family NAME=SPEC puts several specs in one. Each family's curve takes, at every budget, its configuration of lowest val loss; figures are on --split (test: nothing is chosen on it). The first family (--family ones first) is the baseline."""
    from hepc.report.side_by_side import compare_results, render_table

    families = _families(specs, family, store, split)
    reference = _references(reference_data, store)
    result = split_result(lambda: compare_results([(name, results) for name, results, _ in families], reference, split))
    if plot:
        from hepc.report.plots import plot_curves

        plot_curves(result["curves"], plot, f"{split} loss vs budget (K = all, weights from held-out; chosen on val)")
    if json_out:
        print(json.dumps(result, indent=1))
    else:
        render_table(result, stdout())


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
    result = split_result(lambda: compare_results([(name, results) for name, results, _ in families], reference, split))
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
