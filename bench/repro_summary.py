"""Every figure of the CPU reproduction from one store: docs/results/summary.json, the plots and
docs/results.md (rendered from templates/results.md.j2). Run by bench/repro.sh after training;
reads only committed, intact objects (nothing is trained or refit here).

    python bench/repro_summary.py --store runs/repro [--timing runs/repro.timing.tsv] [--out docs]

The rules it applies (docs/repro-notes.md): every curve is the headline curve (K = all, weights
from held-out; `hepc compare`), seeds are averaged and reported as mean ± sd, an ablation "differs"
when |Δ| > 2·sd (sd = the larger of the two specs' seed sd; a single-seed spec uses q0's), and the
best-K-on-val figures appear only as labelled diagnostics.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs" / "repro"  # --specs overrides it (the tests use miniature copies)
ABLATIONS = ("q0-flatwd", "q0-nodistill", "q0-noperturb", "q0-p2", "q0-p4")
PRIORS = ("q0", "q0-learned", "q0-uniform")
REFERENCES = ("single", "single-2x", "single-4x", "single-8x")


def _collect(name: str, store: str):
    """(spec name, results) of a spec, or None while its prior/curve steps are not in the store
    (a partial store gives a partial page, each missing part named; a damaged object still fails)."""
    from hepc.compile import compile_spec
    from hepc.plan import make_plan
    from hepc.results import collect
    from hepc.spec.load import load_spec
    from hepc.store import Store, resolve_store_path

    loaded = load_spec(Path(SPECS) / f"{name}.yaml")
    compiled = compile_spec(loaded)
    the_store = Store(resolve_store_path(store, loaded.spec.runtime.store))
    if make_plan(compiled, the_store).to_run:
        return None
    return loaded.spec.name, collect(compiled, the_store)


def _final(results) -> dict:
    """Headline final loss of a spec: mean ± sd over seeds (one value for an unseeded spec)."""
    from hepc.report.curves import flatten_results, headline_curve, seed_populations

    pops = seed_populations(results) or flatten_results(results)[:1]
    values = [headline_curve(p["curve"])[-1][1] for p in pops]
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "n": n, "values": values, "budget_epochs": headline_curve(pops[0]["curve"])[-1][0]}


def _prior_fits(results) -> list[dict]:
    """Per population: the prior's val NLL against uniform's (as recorded by the prior step)."""
    from hepc.report.curves import flatten_results

    rows = []
    for pop in flatten_results(results):
        fit = pop.get("fit", {})
        rows.append({"label": pop.get("label") or "", "prior": pop["prior"]["kind"],
                     "val_nll": fit.get("val_nll"), "uniform_val_nll": fit.get("uniform_val_nll"),
                     "heldout_nll": fit.get("nll"), "heldout_uniform_nll": fit.get("uniform_nll")})
    return rows


def _differs(delta: float, sd_a, sd_b) -> dict:
    sd = max(x for x in (sd_a, sd_b, 0.0) if x is not None)
    return {"delta": delta, "sd": sd, "beyond_2sd": bool(sd > 0 and abs(delta) > 2 * sd)}


def summarise(store: str, timing: str | None, out: Path, plots: bool = True) -> dict:
    from hepc.report.side_by_side import compare_results

    res = {name: _collect(name, store) for name in
           ("ensemble", *PRIORS, "q0-8s", *ABLATIONS, *REFERENCES)}
    missing = sorted(name for name, r in res.items() if r is None)
    if res["ensemble"] is None or res["q0"] is None:
        raise SystemExit(f"error: the headline specs are not trained yet ({', '.join(missing)}); run bench/repro.sh")
    have = lambda *names: [res[n] for n in names if res[n] is not None]
    headline = compare_results(have("ensemble", *PRIORS))
    vs_single = compare_results(have("single", "q0"))["comparisons"] if res["single"] else None
    refs = [res[n][1] for n in REFERENCES if res[n] is not None]
    efficiency = compare_results(have("ensemble", "q0"), refs)["data_efficiency"] if len(refs) == len(REFERENCES) else None
    ablations, base = [], None
    if res["q0-8s"] is not None:
        base = _final(res["q0-8s"][1])
        for name in ABLATIONS:
            if res[name] is None:
                continue
            f = _final(res[name][1])
            ablations.append({"spec": name, "final": f,
                              "vs_q0_8s": _differs(f["mean"] - base["mean"], f["sd"], base["sd"])})
    q0_final = _final(res["q0"][1])
    priors = []
    for name in PRIORS:
        if res[name] is None:
            continue
        f = _final(res[name][1])
        priors.append({"spec": name, "final": f, "vs_q0": _differs(f["mean"] - q0_final["mean"], f["sd"], q0_final["sd"]),
                       "fits": _prior_fits(res[name][1])})
    spread = None
    try:
        sys.path.insert(0, str(ROOT / "bench"))
        from ensemble_spread import spread as ensemble_spread

        spread = ensemble_spread(str(Path(SPECS) / "ensemble-24.yaml"), 16, 2000, store)
    except SystemExit as e:  # not trained: say so in the summary rather than fail the page
        spread = {"error": str(e)}
    wall = _wall(timing)
    summary = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "store": store,
        "wall_s": wall,
        "k_rule": headline["k_rule"],
        "comparisons": headline["comparisons"],
        "finals": headline["finals"],
        "not_measured": missing,
        "vs_single": vs_single,
        "data_efficiency": efficiency,
        "ablations_at_8S": {"q0-8s": base, "rows": ablations},
        "priors": priors,
        "baseline_spread": spread,
    }
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if plots:
        from hepc.report.plots import plot_curves

        plot_curves(headline["curves"], out / "results" / "main.png", "val loss vs budget (K = all, weights from held-out)")
        if base is not None and ablations:
            abl = compare_results(have("q0-8s", *ABLATIONS))
            plot_curves(abl["curves"], out / "results" / "ablations.png", "ablations at 8·S (K = all, mean over seeds)")
    _render(summary, out / "results.md")
    return summary


def _wall(timing: str | None) -> float | None:
    if not timing or not Path(timing).is_file():
        return None
    for line in Path(timing).read_text().splitlines():
        parts = line.split("\t")
        if parts[:2] == ["all", "wall"]:
            return float(parts[3]) - float(parts[2])
    return None


def _render(summary: dict, path: Path) -> None:
    from hepc.report.render import fmt_num
    from hepc.templating import TEMPLATES, sandboxed_env

    env = sandboxed_env(TEMPLATES, autoescape=False, required="results.md.j2", trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt_num
    env.filters["pm"] = lambda s, d=4: "n/a" if not s or s.get("mean") is None else (
        f"{s['mean']:.{d}f}" + ("" if s.get("sd") is None else f" ± {s['sd']:.{d}f}"))
    env.filters["ratio"] = lambda x: "not reached" if x is None else f"{x:.2f}×"
    path.write_text(env.get_template("results.md.j2").render(**summary))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="runs/repro")
    ap.add_argument("--timing")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--specs", help="folder of the reproduction specs (default specs/repro)")
    args = ap.parse_args()
    global SPECS
    if args.specs:
        SPECS = Path(args.specs)
    from hepc.errors import HepcError

    try:
        summary = summarise(args.store, args.timing, Path(args.out), plots=not args.no_plots)
    except HepcError as e:
        for p in e.problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    c = summary["comparisons"][0]
    print(f"q0 vs the 16·S ensemble: epochs-to-match {c['epochs_to_match']['ratio']}, matched K {c['matched_k_ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
