"""`hepc compare`: several families of specs side by side against the first (the baseline).

A family is one spec (its sweep's configurations, its seeds) or several specs given one `--family`
name (hepc/report/families.py): its curve takes, at each budget, the configuration of lowest val loss,
and every figure is read on the split asked for (`--split test` for a headline: nothing is chosen on it).
For each candidate: epochs-to-match (the budget at which its curve first reaches the baseline's final
loss, log-linear interpolation; docs/method.md §8.2-§8.3) and its ratio, the same with the candidate's
ensemble limited to the baseline's ensemble size (matched K, §8.4, and whether K binds), the loss gap at
equal budget, and, over the seeds both share, paired differences with 95 % t-intervals
(hepc/report/paired.py). With reference data (single models trained on more data), the equivalent-data
multiplier of each family's final loss in trained tokens (docs/method.md §8.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hepc.report.compare import (
    compare,
    data_efficiency,
    epochs_to_match,
    interpolate_loss,
    loss_gap_at_equal_budget,
    with_teacher,
)
from hepc.report.curves import DIAGNOSTIC_RULE, HEADLINE_RULE, best_k_curve, fixed_k_curve, flatten_results, mean_points
from hepc.report.families import (
    Config,
    Family,
    MissingSplit,
    grid_edges,
    per_seed_curves,
    saturation,
    split_loss,
    trained_tokens,
)
from hepc.report.paired import paired_differences, ratio_interval


def data_tokens(results: Mapping) -> int:
    """Tokens of data a population had: its train split plus the held-out slice carved from it."""
    tokens = results.get("corpus", {}).get("tokens", {})
    return int(tokens.get("train", 0)) + int(tokens.get("heldout", 0))


def reference_points(references: Sequence[Mapping], split: str = "val") -> list[tuple[float, float]]:
    """(trained tokens, loss on `split`) per data size of the reference specs (single models trained on
    more data): at each data size the (model, epochs) of lowest mean val loss, read on `split` (for
    `val`, the best loss of any member, as chosen)."""
    groups: dict[int, list[Mapping]] = {}
    for reference in references:
        for pop in flatten_results(reference):
            groups.setdefault(_trained(pop), []).append(pop)
    out = []
    for tokens, pops in sorted(groups.items()):
        family = Family.from_results(f"{tokens} tokens", [{"spec": p.get("spec"), "populations": [p]} for p in pops])
        best = min((row["val"], row["loss"]) for c in family.configs for row in c.headline(split).values())
        out.append((float(tokens), best[1]))
    return out


def _trained(pop: Mapping) -> int:
    """Tokens a population trains on per epoch (older results: train + held-out, as before)."""
    return int(pop.get("trained_tokens_per_epoch") or data_tokens(pop))


def as_family(item) -> Family:
    """A Family from a (name, `collect` output) pair, a (name, [outputs]) pair, or a Family."""
    if isinstance(item, Family):
        return item
    name, results = item
    return Family.from_results(name, results if isinstance(results, list) else [results])


def compare_results(named: Sequence, reference_data: Sequence[Mapping] | None = None, split: str = "val") -> dict:
    """`named`: families, or (name, `hepc.report.results.collect` output or a list of them) pairs; the first is
    the baseline. `reference_data`: `collect` outputs of the reference specs (models trained on more data).
    Every figure is on `split`; every choice (configuration, budget) is made on val."""
    families = [as_family(item) for item in named]
    for fam in families:
        if not fam.has_split(split):
            raise MissingSplit(f"{fam.name} has no {split} scores (its corpus has no {split} split: data.{split}_tokens)")
    base, candidates = families[0], families[1:]
    k = reference_k(base)
    curves: dict[str, list] = {}
    finals = []
    for fam in families:
        points = fam.curve(split)
        curves[fam.name] = [[p["budget"], p["loss"]] for p in points]
        last = points[-1]
        finals.append({"spec": fam.name, "budget_epochs": last["budget"], "loss": last["loss"], "val_loss": last["val"],
                       "config": last["config"], "at_budget": last["at_budget"], "configurations": len(fam.configs),
                       "best_k_on_val_diagnostic": min(l for _, l in diagnostic_curve(fam))})
    for fam in candidates:
        fixed = matched_k_curve(fam, k, split)
        if fixed is not None:
            curves[f"{fam.name} (K={k})"] = [list(p) for p in fixed]
    out = {
        "baseline": base.name,
        "baseline_k": k,
        "split": split,
        "k_rule": HEADLINE_RULE,
        "family_rule": FAMILY_RULE,
        "diagnostic_rule": DIAGNOSTIC_RULE,
        "finals": finals,
        "comparisons": [compare_families(base, fam, split) for fam in candidates],
        "curves": curves,
        "data_efficiency": None,
        "warnings": saturation_warnings(base, candidates) + [w for f in (base, *candidates) for w in grid_edges(f)],
    }
    if reference_data is not None:
        points = reference_points(reference_data, split)
        out["data_efficiency"] = [
            {"spec": f["spec"], "trained_tokens": _trained_of(fam),
             **data_efficiency(points, f["loss"], base_tokens=_trained_of(fam), log_tokens=True)}
            for f, fam in zip(finals, families)
        ]
    return out


FAMILY_RULE = ("each family's curve takes, at every budget, the configuration and budget (up to it) of lowest "
               "mean val loss; figures are that choice's loss on the split shown")


def _trained_of(fam: Family) -> int:
    return max((_trained(pop) for c in fam.configs for pop in c.seeds.values()), default=0)


def reference_k(fam: Family) -> int:
    """The reference's ensemble size: members of its chosen configuration at its final budget."""
    return int(fam.curve("val")[-1]["members"])


def _split_points(points: Sequence[Mapping], split: str) -> list[dict]:
    return [{**p, "val_loss": split_loss(p, split)} for p in points]


def _mean_points(config: Config, split: str) -> list[dict]:
    """A configuration's curve points averaged over its seeds, their `val_loss` read on `split`."""
    pops = [{"values": {"seed": s}, "curve": _split_points(pop["curve"], split)} for s, pop in config.seeds.items()]
    return mean_points(pops)


def diagnostic_curve(fam: Family) -> list[tuple[float, float]]:
    """Best K on val at each budget over every configuration (seed means): a diagnostic, never a ratio."""
    return best_k_curve([p for c in fam.configs for p in _mean_points(c, "val")])


def matched_k_curve(fam: Family, k: int, split: str) -> list[tuple[float, float]] | None:
    """The family's curve with each chosen configuration's inference ensemble limited to K members
    (chosen as the headline curve chooses: on its val loss; nothing chosen on the K curve)."""
    fixed: dict[str, dict[float, float]] = {}
    try:
        for c in fam.configs:
            fixed[c.name] = dict(fixed_k_curve(_mean_points(c, split), k))
    except ValueError:
        return None
    out = []
    for p in fam.curve(split):
        loss = fixed[p["config"]].get(p["at_budget"])
        if loss is not None:
            out.append((p["budget"], loss))
    return out or None


def compare_families(ref: Family, cand: Family, split: str) -> dict:
    """Epochs-to-match, matched K, loss gaps and paired seed statistics of a candidate family against a
    reference family, on `split` (choices on val)."""
    rc, cc = ref.curve(split), cand.curve(split)
    ref_pairs, cand_pairs = [(p["budget"], p["loss"]) for p in rc], [(p["budget"], p["loss"]) for p in cc]
    target, ref_budget = rc[-1]["loss"], rc[-1]["at_budget"]
    match = epochs_to_match(cand_pairs, target, envelope=False)
    e = {"reference_budget": ref_budget, "reference_final_budget": rc[-1]["budget"], "reference_loss": target,
         "candidate_budget": match["budget"], "ratio": None if match["budget"] is None else ref_budget / match["budget"],
         "reached": match["reached"], "at_first_point": match["at_first_point"], "match": match}
    crossing = next((p for p in cc if match["budget"] is not None and p["budget"] >= match["budget"]), None)
    k = int(rc[-1]["members"])
    fixed = matched_k_curve(cand, k, split)
    if fixed is None:
        matched = {"k": k, "reached": False, "ratio": None, "candidate_budget": None,
                   "error": f"{cand.name} did not evaluate K={k} (add it to prior.budgets)"}
    else:
        m = epochs_to_match(fixed, target, envelope=False)
        matched = {"k": k, "reference_budget": ref_budget, "reference_loss": target, "candidate_budget": m["budget"],
                   "ratio": None if m["budget"] is None else ref_budget / m["budget"], "reached": m["reached"],
                   "at_first_point": m["at_first_point"], "match": m}
    matched["snapshots_at_crossing"] = None if crossing is None else crossing["members"]
    matched["binds"] = None if crossing is None else k < crossing["members"]
    ref_t = _with_teacher(ref, rc[-1], ref_budget)
    cand_t = _with_teacher(cand, crossing, match["budget"]) if crossing is not None else None
    diagnostic = compare(diagnostic_curve(ref), diagnostic_curve(cand), envelope=True)["epochs_to_match"]
    return {
        "reference": ref.name,
        "candidate": cand.name,
        "split": split,
        "envelope": False,
        "k_rule": HEADLINE_RULE,
        "family_rule": FAMILY_RULE,
        "epochs_to_match": e,
        "loss_gap_at_equal_budget": loss_gap_at_equal_budget(ref_pairs, cand_pairs, envelope=False),
        "matched_k": matched,
        "matched_k_ratio": matched["ratio"],
        "with_teacher_forwards": {"reference_budget": ref_t, "candidate_budget": cand_t,
                                  "ratio": None if ref_t is None or not cand_t else ref_t / cand_t},
        "diagnostic": {"rule": DIAGNOSTIC_RULE, "epochs_to_match": diagnostic, "ratio": diagnostic["ratio"]},
        "reference_family": {"name": ref.name, "configurations": [c.name for c in ref.configs], "chosen": ref.choices(split)},
        "candidate_family": {"name": cand.name, "configurations": [c.name for c in cand.configs], "chosen": cand.choices(split)},
        "trained_tokens": {"reference": trained_tokens(ref), "candidate": trained_tokens(cand)},
        "paired": paired_block(rc, cc, ref_budget),
    }


def _with_teacher(fam: Family, point: Mapping | None, budget: float | None) -> float | None:
    if point is None or budget is None:
        return None
    pop = next(iter(fam.config_of(point["config"]).seeds.values()))
    return with_teacher(pop, budget)


def paired_block(rc: Sequence[Mapping], cc: Sequence[Mapping], ref_budget: float) -> dict:
    """Per-seed paired statistics over the seeds both families' choices have: the final gap (at the
    largest common budget), the gap at each candidate budget inside the reference's range, and
    epochs-to-match per seed (each seed's candidate curve against that seed's reference final loss)."""
    ref_seeds, cand_seeds = per_seed_curves(rc), per_seed_curves(cc)
    shared = [s for s in cand_seeds if s in ref_seeds]
    common = min(rc[-1]["budget"], cc[-1]["budget"])
    final_ref = {s: interpolate_loss(ref_seeds[s], common) for s in shared}
    final_cand = {s: interpolate_loss(cand_seeds[s], common) for s in shared}
    usable = [s for s in shared if final_ref[s] is not None and final_cand[s] is not None]
    final = paired_differences({s: final_ref[s] for s in usable}, {s: final_cand[s] for s in usable})
    gaps = []
    for p in cc:
        b = p["budget"]
        r = {s: interpolate_loss(ref_seeds[s], b) for s in shared}
        c = {s: interpolate_loss(cand_seeds[s], b) for s in shared}
        keep = [s for s in shared if r[s] is not None and c[s] is not None]
        if len(keep) >= 2:
            d = paired_differences({s: r[s] for s in keep}, {s: c[s] for s in keep})
            gaps.append({"budget": b, "gap_mean": d["mean"], "gap_ci95": d["ci95"], "n_seeds": d["n_seeds"]})
    ratios = {}
    for s in shared:
        m = epochs_to_match(cand_seeds[s], ref_seeds[s][-1][1], envelope=False)
        ratios[s] = None if m["budget"] is None else ref_budget / m["budget"]
    return {
        "n_seeds": final["n_seeds"],
        "seeds": final["seeds"],
        "budget": common,
        "final_gap_mean": final["mean"],
        "final_gap_ci95": final["ci95"],
        "final_gap_per_seed": final["per_seed"],
        "verdict": final["verdict"],
        "gap_by_budget": gaps,
        "epochs_to_match": ratio_interval(ratios) if shared else None,
        "interval": final["interval"],
    }


def saturation_warnings(base: Family, candidates: Sequence[Family]) -> list[str]:
    """Warn where the reference's single models do not saturate, or the comparison stops before they do."""
    sat = saturation(base)
    if sat is None:
        return []
    if not sat["saturated"]:
        return [f"{base.name}: its single models still improve at their largest budget ({sat['largest']:g} epochs, "
                f"val {sat['val_loss']:.4f}): the data do not saturate a model here, the regime hyper-epoch methods are for"]
    out = []
    for fam in candidates:
        end = fam.curve("val")[-1]["budget"]
        if end < sat["epochs"]:
            out.append(f"{fam.name} stops at {end:g} epochs, before {base.name}'s single model saturates "
                       f"({sat['epochs']:g} epochs): it is compared where one model still improves")
    return out


def _ci(ci, digits: int = 4, unit: str = "") -> str:
    return "n/a" if not ci else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]" if not unit else f"[{ci[0]:.2f}, {ci[1]:.2f}]{unit}"


def render_table(result: Mapping, console) -> None:
    from rich.table import Table
    from rich.text import Text

    from hepc.report.render import comparison_rows
    from hepc.wording import SIGN_NOTE

    split = result.get("split", "val")
    for line in result.get("warnings") or []:
        console.print(Text(f"warning: {line}", style="yellow"))
    finals = Table(title=f"final losses ({split} nats/token; K = all, weights from held-out; configurations chosen on val)",
                   caption="diagnostic column: best K chosen on val at any budget (optimistic; never used for a ratio); "
                           "lower = better")
    for col in ("family", "configurations", "budget (epochs)", f"{split} loss", "chosen (configuration @ epochs)",
                "best K on val (diagnostic)"):
        finals.add_column(col, justify="right", overflow="fold")
    for f in result["finals"]:
        finals.add_row(Text(f["spec"]), str(f.get("configurations", 1)), f"{f['budget_epochs']:g}", f"{f['loss']:.4f}",
                       Text(f"{f.get('config', f['spec'])} @ {f.get('at_budget', f['budget_epochs']):g}"),
                       f"{f['best_k_on_val_diagnostic']:.4f}")
    console.print(finals, markup=False)
    if result["comparisons"]:
        table = Table(
            title=Text(f"against the baseline {result['baseline']} on {split} (ensemble size K={result['baseline_k']})"),
            caption=f"K rule: {result['k_rule']}. Gap: candidate loss − baseline loss at equal budget "
                    f"({SIGN_NOTE} for the candidate). 'ratio w/ teacher': the same budgets counting teacher forwards (1/3 pass each).",
        )
        for col in ("candidate", "target loss", "@ epochs", "reached at", "ratio", "ratio w/ teacher",
                    "K-matched at", "K ratio", "gap @ largest common budget", "best-K-on-val ratio (diagnostic)"):
            table.add_column(col, justify="right", overflow="fold")
        for r in comparison_rows(result["comparisons"]):
            table.add_row(Text(r["candidate"]), r["reference_loss"], r["reference_budget"], r["candidate_budget"],
                          r["ratio"], r["teacher_ratio"], r["k_budget"], r["k_ratio"], r["gap"],
                          r["diagnostic_ratio"])
        console.print(table)
        for c in result["comparisons"]:
            console.print(Text(paired_line(c)))
            k = c["matched_k"]
            if k.get("binds") is False:
                console.print(Text(f"{c['candidate']}: matched K={k['k']} does not bind (it has "
                                   f"{k['snapshots_at_crossing']} snapshots at the crossing)"))
            tokens = c.get("trained_tokens") or {}
            if tokens:
                console.print(Text(f"{c['candidate']}: trains on {'/'.join(f'{t:,}' for t in tokens['candidate'])} "
                                   f"tokens per epoch, {c['reference']} on {'/'.join(f'{t:,}' for t in tokens['reference'])}"))
    for eff in result.get("data_efficiency") or []:
        if eff["multiplier"] is not None:
            console.print(f"{eff['spec']}: data efficiency {eff['multiplier']:.2f}× in trained tokens "
                          f"({eff['tokens']:,.0f} tokens of fresh data reach its {split} loss {eff['loss']:.4f})", markup=False)
        else:
            console.print(f"{eff['spec']}: data efficiency not measurable: {eff['note']}", markup=False)


def paired_line(c: Mapping) -> str:
    """One line of paired seed statistics for a comparison (or why there are none)."""
    p = c.get("paired") or {}
    if not p.get("n_seeds"):
        return f"{c['candidate']}: no seeds shared with {c['reference']}: no paired statistics"
    if p["n_seeds"] < 2:
        return f"{c['candidate']}: one seed shared with {c['reference']}: gap {p['final_gap_mean']:+.4f}, no interval"
    e = p.get("epochs_to_match") or {}
    ratio = "" if e.get("mean") is None else (
        f"; epochs-to-match {e['mean']:.2f}× {_ci(e['ci95'], unit='×')} ({e['reached']} seeds reach it)")
    return (f"{c['candidate']} vs {c['reference']}, {p['n_seeds']} paired seeds: final gap {p['final_gap_mean']:+.4f} "
            f"{_ci(p['final_gap_ci95'])} at {p['budget']:g} epochs ({p['verdict']}){ratio}; {p['interval']}")
