"""Every figure of the CPU reproduction (protocol v3) from one store: docs/results/summary.json, the
plots and docs/results.md (rendered from templates/results.md.j2 out of summary.json alone). Run by
bench/repro.sh after training; reads only committed, intact objects (nothing is trained or refit).

    python bench/repro_summary.py --store runs/repro [--timing runs/repro.timing.tsv] [--out docs]
    python bench/repro_summary.py --store runs/repro --quick     # the --quick part only, checked against
                                                                 # docs/results/summary.json's "quick" block

The rules (docs/repro-notes.md): every family is tuned on val per budget and read on **test**
(`hepc compare --split test`, the same code); seeds are shared across arms and paired (95 %
t-intervals); an ablation differs from q0 only when its paired interval excludes 0; best-K-on-val
figures appear only as labelled diagnostics. The protocol (which specs form which family, comparison
and ablation) is PROTOCOL below; each comparison records the `hepc compare` command that prints it.
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
QUICK_SEEDS = [100, 200]

# name → (scale folder, spec files); a family is every configuration and seed of its specs.
FAMILIES = {
    "ensembles": ["ens-1s", "ens-1.5s", "ens-2s", "ens-3s", "ens-4s"],
    "single": ["single"],
    "q0": ["q0"],
    "q0-heldout5": ["q0-h5"],
}
SCALES = ("a", "b")  # a: the larger scale; b: half the data and a smaller model
COMPARISONS = [  # (scale, reference family, candidate family)
    ("a", "ensembles", "q0"), ("a", "single", "q0"), ("a", "ensembles", "q0-heldout5"),
    ("b", "ensembles", "q0"), ("b", "single", "q0"),
]
QUICK = ("b", "ensembles", "q0")  # what `--quick` recomputes on QUICK_SEEDS
ABLATIONS = [  # (scale, spec, what it changes); each against q0's base configuration (ablation_base)
    ("a", "abl-flatwd", "flat WD (wd_floor 1) at q0's integrated decay per cycle"),
    ("a", "abl-noperturb", "no weight perturbation"),
    ("a", "abl-perturb2x", "perturbation scale doubled"),
    ("a", "abl-alpha0", "no chain distillation (alpha 0)"),
    ("a", "abl-p2", "P = 2 trajectories at the same budget"),
    ("a", "abl-p4", "P = 4 trajectories at the same budget"),
]


# --------------------------------------------------------------------------- reading the store


def _collect(path: str, store: str, overrides=(), missing: list | None = None):
    """(loaded spec, compiled, results) of a spec, or None while nothing of it is in the store. A sweep
    whose runs are partly done gives the configurations (non-seed sweep values) that have every seed
    done; each configuration left out is appended to `missing` (a partial store gives a partial page,
    each missing part named; a damaged object still fails)."""
    from hepc.compile.compiler import compile_spec
    from hepc.compile.plan import make_plan
    from hepc.errors import HepcError
    from hepc.report.families import config_label
    from hepc.report.results import collect, collect_population
    from hepc.spec.load import load_spec
    from hepc.store.layout import resolve_store_path
    from hepc.store.objects import Store

    if not (Path(SPECS) / f"{path}.yaml").is_file():
        return None
    loaded = load_spec(Path(SPECS) / f"{path}.yaml", list(overrides))
    compiled = compile_spec(loaded)
    the_store = Store(resolve_store_path(store, loaded.spec.runtime.store))
    if not make_plan(compiled, the_store).to_run:
        return loaded, compiled, collect(compiled, the_store)
    if len(compiled.populations) == 1:
        return None
    groups: dict[str, list] = {}
    for pop in compiled.populations:
        try:
            row = collect_population(compiled, pop, the_store)
        except HepcError:
            row = None
        groups.setdefault(config_label(pop.values or {}), []).append(row)
    rows = []
    for label, group in groups.items():
        if all(r is not None for r in group):
            rows += group
        elif missing is not None:
            missing.append(f"{path} [{label}]" if label else path)
    return (loaded, compiled, {"spec": compiled.spec.name, "populations": rows}) if rows else None


def _only_seeds(results: dict, seeds) -> dict:
    """A `collect` output restricted to the populations of the given seeds."""
    if seeds is None:
        return results
    pops = [p for p in results.get("populations", [results]) if p.get("values", {}).get("seed", p.get("seed")) in seeds]
    return {"spec": results["spec"], "populations": pops}


def _only_values(results: dict, values: dict) -> dict:
    pops = [p for p in results.get("populations", [results])
            if all(p.get("values", {}).get(k) == v for k, v in values.items())]
    return {"spec": results["spec"], "populations": pops}


class Store:
    """The results of every protocol spec in one store, read once each."""

    def __init__(self, store: str, seeds=None):
        self.store, self.seeds, self.cache, self.missing = store, seeds, {}, []

    def results(self, scale: str, spec: str):
        key = f"{scale}/{spec}" if not spec.startswith("data/") else spec
        if key not in self.cache:
            overrides = [f"sweep.seed={json.dumps(self.seeds)}"] if self.seeds else []  # what --quick trains
            partly: list[str] = []
            got = _collect(key, self.store, overrides, partly)
            self.cache[key] = None if got is None else got
            self.missing += [key] if got is None else partly
        got = self.cache[key]
        return None if got is None else (got[0], got[1], _only_seeds(got[2], self.seeds))

    def family(self, scale: str, name: str):
        parts = [self.results(scale, s) for s in FAMILIES[name]]
        if any(p is None for p in parts):
            return None
        return [p[2] for p in parts]


# --------------------------------------------------------------------------- the figures


def _command(scale: str, ref: str, cand: str) -> str:
    fam = " ".join(f"--family {ref}=specs/repro/{scale}/{s}.yaml" for s in FAMILIES[ref])
    fam += " " + " ".join(f"--family {cand}=specs/repro/{scale}/{s}.yaml" for s in FAMILIES[cand])
    return f"hepc compare {fam} --split test --store STORE"


def comparison(db: Store, scale: str, ref: str, cand: str) -> dict | None:
    from hepc.report.side_by_side import compare_results

    a, b = db.family(scale, ref), db.family(scale, cand)
    if a is None or b is None:
        return None
    out = compare_results([(ref, a), (cand, b)], None, "test")
    c = out["comparisons"][0]
    e, p = c["epochs_to_match"], c["paired"]
    per_seed = p["epochs_to_match"] or {}
    return {
        "name": f"{cand} vs {ref}", "scale": scale, "split": "test", "command": _command(scale, ref, cand),
        "reference_family": {**c["reference_family"], "chosen": c["reference_family"]["chosen"]},
        "candidate_family": c["candidate_family"],
        "trained_tokens": c["trained_tokens"],
        "finals": {f["spec"]: {k: f[k] for k in ("budget_epochs", "loss", "val_loss", "config", "at_budget")}
                   for f in out["finals"]},
        "epochs_to_match": {"ratio": e["ratio"], "reference_budget": e["reference_budget"],
                            "reference_loss": e["reference_loss"], "candidate_budget": e["candidate_budget"],
                            "reached": e["reached"], "ci95": per_seed.get("ci95"), "per_seed_mean": per_seed.get("mean"),
                            "per_seed": per_seed.get("per_seed"), "seeds_reaching": per_seed.get("reached"),
                            "interval": per_seed.get("interval")},
        "matched_k": {"k": c["matched_k"]["k"], "ratio": c["matched_k"]["ratio"], "binds": c["matched_k"]["binds"],
                      "snapshots_at_crossing": c["matched_k"]["snapshots_at_crossing"]},
        "paired": {"n_seeds": p["n_seeds"], "seeds": p["seeds"], "budget": p["budget"],
                   "final_gap_mean": p["final_gap_mean"], "final_gap_ci95": p["final_gap_ci95"],
                   "final_gap_per_seed": p["final_gap_per_seed"], "verdict": p["verdict"],
                   "gap_by_budget": p["gap_by_budget"], "interval": p["interval"]},
        "with_teacher_forwards": c["with_teacher_forwards"]["ratio"],
        "warnings": out["warnings"],
        "curves": out["curves"],
    }


def ablation_base(db: Store, scale: str):
    """q0's base configuration (the weight decay the q0 spec names outside its sweep, which its sweep also
    holds and every ablation spec uses): the arm every ablation changes."""
    got = db.results(scale, "q0")
    if got is None:
        return None, None
    loaded = got[0]
    wd = loaded.spec.optimizer.weight_decay
    if loaded.spec.sweep and "optimizer.weight_decay" in loaded.spec.sweep:
        base = _only_values(got[2], {"optimizer.weight_decay": wd})
        return (base, wd) if base["populations"] else (None, None)
    return got[2], wd


def _per_seed_final(results: dict) -> dict:
    """seed → (test loss of K = all at the final budget, mean member test loss there, members' val losses by cycle)."""
    from hepc.report.curves import flatten_results

    out = {}
    for pop in flatten_results(results):
        seed = pop.get("values", {}).get("seed", pop.get("seed"))
        final = max(pop["curve"], key=lambda p: (p["budget_epochs"], p["k_label"] == "all"))
        members = pop["members"]
        out[seed] = {
            "ensemble_test": final["test_loss"],
            "mean_member_test": sum(m["test_loss"] for m in members) / len(members),
            "chain": [{"trajectory": m["trajectory"], "cycle": m["cycle"], "val_loss": m["val_loss"],
                       "train_ce": m.get("train_ce"), "train_kd": m.get("train_kd")} for m in members],
        }
    return out


def ablation(db: Store, scale: str, spec: str, what: str, base: dict, base_wd) -> dict | None:
    from hepc.report.paired import paired_differences

    got = db.results(scale, spec)
    if got is None or base is None:
        return None
    a, b = _per_seed_final(base), _per_seed_final(got[2])
    paired = paired_differences({s: v["ensemble_test"] for s, v in a.items()}, {s: v["ensemble_test"] for s, v in b.items()})
    diversity = paired_differences({s: v["ensemble_test"] - v["mean_member_test"] for s, v in a.items()},
                                   {s: v["ensemble_test"] - v["mean_member_test"] for s, v in b.items()})
    efolds = got[1].populations[0].totals["wd_efolds_per_cycle"]
    return {
        "name": spec, "scale": scale, "changes": what, "split": "test", "base_weight_decay": base_wd,
        "paired": {"n_seeds": paired["n_seeds"], "seeds": paired["seeds"], "final_gap_mean": paired["mean"],
                   "final_gap_ci95": paired["ci95"], "final_gap_per_seed": paired["per_seed"],
                   "verdict": paired["verdict"].replace("candidate", "ablation"), "interval": paired["interval"]},
        "diversity": {"definition": "ensemble test loss − mean member test loss (K = all, final budget; more negative = "
                                    "more diverse members)",
                      "q0": sum(v["ensemble_test"] - v["mean_member_test"] for v in a.values()) / max(len(a), 1),
                      "ablation": sum(v["ensemble_test"] - v["mean_member_test"] for v in b.values()) / max(len(b), 1),
                      "paired_gap_mean": diversity["mean"], "paired_gap_ci95": diversity["ci95"]},
        "wd_efolds_per_cycle": efolds,
        "chain": {"q0": _chain_means(a), "ablation": _chain_means(b)},
    }


def _chain_means(per_seed: dict) -> list[dict]:
    """Mean over seeds, per (trajectory 1) cycle: member val loss, train CE and KD — the chain read cycle by cycle."""
    rows: dict[int, list] = {}
    for v in per_seed.values():
        for m in v["chain"]:
            if m["trajectory"] == 1:
                rows.setdefault(m["cycle"], []).append(m)
    out = []
    for c in sorted(rows):
        ms = rows[c]
        mean = lambda key: None if any(m[key] is None for m in ms) else sum(m[key] for m in ms) / len(ms)
        out.append({"cycle": c, "val_loss": mean("val_loss"), "train_ce": mean("train_ce"), "train_kd": mean("train_kd")})
    return out


def data_efficiency(db: Store, scale: str) -> list[dict]:
    """q0's and the ensemble family's final test losses at `scale` as multiples of their own trained tokens,
    against one envelope: single models of both sizes on every data size, each at its epochs chosen on val."""
    from hepc.report.side_by_side import compare_results

    refs = [db.results("", f"data/{path.stem}") for path in sorted((Path(SPECS) / "data").glob("*.yaml"))]
    fams = [(name, db.family(scale, name)) for name in ("q0", "ensembles")]
    if not refs or any(r is None for r in refs) or any(f is None for _, f in fams):
        return []
    out = compare_results(fams, [r[2] for r in refs], "test")
    sizes = sorted({f"{r[0].spec.model.n_layer} layers × {r[0].spec.model.d_model}" for r in refs})
    data_sizes = sorted({r[0].spec.data.train_tokens for r in refs})
    return [{"method": eff["spec"], "scale": scale, "split": "test", "unit": "trained tokens",
             "trained_tokens": eff["trained_tokens"], "loss": eff["loss"], "multiplier": eff["multiplier"],
             "status": eff["status"], "envelope": eff["envelope"], "model_sizes": sizes, "data_sizes": data_sizes,
             "note": eff["note"]} for eff in out["data_efficiency"]]


def regime(db: Store, scale: str) -> dict | None:
    """What the specs give the primitives: decay per cycle, the chain, single-model saturation."""
    from hepc.report.families import Family, saturation

    got = db.results(scale, "q0")
    single = db.family(scale, "single")
    if got is None:
        return None
    pops = got[1].populations
    sat = saturation(Family.from_results("single", single)) if single else None
    efolds = sorted({tuple(sorted(p.totals["wd_efolds_per_cycle"].items())) for p in pops}, key=lambda t: [v for _, v in t])
    return {"scale": scale, "wd_efolds_per_cycle": [", ".join(f"{v:.2f} ({k})" for k, v in t) for t in efolds],
            "steps_per_cycle": pops[0].totals["steps_per_cycle"], "single_saturation": sat,
            "chain": _chain_means(_per_seed_final(got[2]))}


# --------------------------------------------------------------------------- the page


def summarise(store: str, timing: str | None, out: Path, plots: bool = True) -> dict:
    db = Store(store)
    comparisons = [c for c in (comparison(db, *args) for args in COMPARISONS) if c is not None]
    ablations = []
    base, base_wd = ablation_base(db, "a")
    for scale, spec, what in ABLATIONS:
        row = ablation(db, scale, spec, what, base, base_wd)
        if row is not None:
            ablations.append(row)
    efficiency = [row for scale in SCALES for row in data_efficiency(db, scale)]
    quick = quick_block(store)
    summary = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "protocol": "v3",
        "store": store,
        "wall_s": _wall(timing),
        "rules": {"split": "test (every configuration, K and weight chosen on val or held-out)",
                  "seeds": "shared across arms; paired differences with 95 % t-intervals",
                  "families": "each budget's configuration chosen on val (hepc compare --family)"},
        "scales": [scale_info(db, s) for s in SCALES],
        "comparisons": [{k: v for k, v in c.items() if k != "curves"} for c in comparisons],
        "ablations": ablations,
        "data_efficiency": efficiency,
        "regime": [r for r in (regime(db, s) for s in SCALES) if r is not None],
        "quick": quick,
        "not_measured": sorted(set(db.missing)),
    }
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if plots:
        from hepc.report.plots import plot_curves

        for c in comparisons:
            name = f"{c['scale']}-{c['name'].replace(' vs ', '-vs-')}.png"
            plot_curves(c["curves"], out / "results" / name, f"scale {c['scale'].upper()}: test loss vs budget "
                        "(K = all, held-out weights; configurations chosen on val)")
    _render(summary, out / "results.md")
    return summary


def scale_info(db: Store, scale: str) -> dict | None:
    got = db.results(scale, "q0")
    if got is None:
        return {"name": scale, "measured": False}
    spec = got[0].spec
    pop = got[1].populations[0]
    return {"name": scale, "measured": True, "model": spec.model.model_dump(), "params": pop.totals["params"],
            "data_tokens": spec.data.train_tokens, "heldout_tokens": spec.data.heldout_tokens,
            "q0_trained_tokens": pop.totals["trained_tokens_per_epoch"], "val_tokens": spec.data.val_tokens,
            "test_tokens": spec.data.test_tokens, "budget_epochs": pop.totals["epochs"]}


def quick_block(store: str) -> dict | None:
    """The --quick part: QUICK's comparison on QUICK_SEEDS only (what `bash bench/repro.sh --quick` trains)."""
    db = Store(store, seeds=QUICK_SEEDS)
    c = comparison(db, *QUICK)
    if c is None:
        return None
    return {"seeds": QUICK_SEEDS, "comparison": {k: v for k, v in c.items() if k != "curves"}}


def _wall(timing: str | None) -> float | None:
    if not timing or not Path(timing).is_file():
        return None
    total = 0.0  # `all wall START END`: one run of bench/repro.sh; `all paused START END`: its workers were
    for line in Path(timing).read_text().splitlines():  # stopped (SIGSTOP) meanwhile, for other work
        parts = line.split("\t")
        if parts[:2] == ["all", "wall"]:
            total += float(parts[3]) - float(parts[2])
        elif parts[:2] == ["all", "paused"]:
            total -= float(parts[3]) - float(parts[2])
    return total or None


def _render(summary: dict, path: Path) -> None:
    from hepc.report.render import fmt_num
    from hepc.templating import TEMPLATES, sandboxed_env

    env = sandboxed_env(TEMPLATES, autoescape=False, required="results.md.j2", trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt_num
    env.filters["ci"] = lambda ci, d=4: "n/a" if not ci else f"[{ci[0]:+.{d}f}, {ci[1]:+.{d}f}]"
    env.filters["rci"] = lambda ci: "n/a" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]×"
    env.filters["ratio"] = lambda x: "not reached" if x is None else f"{x:.2f}×"
    env.filters["signed"] = lambda x, d=4: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{d}f}"
    path.write_text(env.get_template("results.md.j2").render(**summary))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="runs/repro")
    ap.add_argument("--timing")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--quick", action="store_true", help="only the --quick block; compare it with summary.json's")
    ap.add_argument("--specs", help="folder of the reproduction specs (default specs/repro)")
    args = ap.parse_args()
    global SPECS
    if args.specs:
        SPECS = Path(args.specs)
    from hepc.errors import HepcError

    try:
        if args.quick:
            return check_quick(args.store, Path(args.out))
        summary = summarise(args.store, args.timing, Path(args.out), plots=not args.no_plots)
    except HepcError as e:
        for p in e.problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    for c in summary["comparisons"]:
        p = c["paired"]
        print(f"scale {c['scale']}: {c['name']}: final gap {p['final_gap_mean']:+.4f} {p['final_gap_ci95']} on test "
              f"({p['n_seeds']} paired seeds, {p['verdict']}); epochs-to-match {c['epochs_to_match']['ratio']}")
    if summary["not_measured"]:
        print(f"not measured yet: {', '.join(summary['not_measured'])}")
    return 0


def check_quick(store: str, out: Path) -> int:
    """Recompute the quick block and compare it, exactly, with the one in summary.json."""
    got = quick_block(store)
    if got is None:
        print("error: the --quick specs are not all in the store yet", file=sys.stderr)
        return 2
    path = out / "results" / "summary.json"
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / "summary-quick.json").write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(path.read_text()).get("quick") if path.is_file() else None
    if want is None:
        print(f"wrote {out / 'results' / 'summary-quick.json'}; {path} has no quick block to check it against")
        return 0
    if json.loads(json.dumps(got)) == want:
        print(f"--quick: identical to the quick block of {path} (seeds {QUICK_SEEDS})")
        return 0
    print(f"--quick: DIFFERS from the quick block of {path}; see {out / 'results' / 'summary-quick.json'}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
