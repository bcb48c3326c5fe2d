"""`hepc compare`: several specs' results side by side against the first one (the baseline).

For each candidate: epochs-to-match (the budget at which its headline curve first reaches the
baseline's final loss, log-linear interpolation; docs/method.md §8.2-§8.3) and its ratio, the same
with the candidate's ensemble limited to the baseline's ensemble size (matched K, §8.4), and the
loss gap at equal budget.
With reference data (single models trained on more data, e.g. a `data.train_tokens` sweep on the
synthetic source), the equivalent-data multiplier of each spec's final loss (docs/method.md §8.5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from hepc.report.compare import compare_populations, data_efficiency
from hepc.report.curves import (
    DIAGNOSTIC_RULE,
    HEADLINE_RULE,
    best_k_curve,
    ensemble_size,
    fixed_k_curve,
    flatten_results,
    headline_curve,
    merge_points,
    seed_populations,
)


def data_tokens(results: Mapping) -> int:
    """Tokens of data a population had: its train split plus the held-out slice carved from it."""
    tokens = results.get("corpus", {}).get("tokens", {})
    return int(tokens.get("train", 0)) + int(tokens.get("heldout", 0))


def reference_points(references: Sequence[Mapping]) -> list[tuple[float, float]]:
    """(data tokens, best val loss of any member) for each population of the reference specs
    (e.g. one spec per data size, each with its own epoch sweep; `data_efficiency` keeps the best
    point per token count)."""
    return [
        (data_tokens(pop), min(m["val_loss"] for m in pop["members"]))
        for reference in references
        for pop in flatten_results(reference)
    ]


def compare_results(named: Sequence[tuple[str, Mapping]], reference_data: Sequence[Mapping] | None = None) -> dict:
    """`named`: (name, `hepc.results.collect` output) pairs; the first is the baseline.
    `reference_data`: `collect` outputs of the reference specs (models trained on more data)."""
    (base_name, baseline), candidates = named[0], named[1:]
    k = ensemble_size(merge_points(baseline))
    curves: dict[str, list] = {}
    finals = []
    for name, res in named:
        curve = headline_curve(merge_points(res))
        diagnostic = best_k_curve(merge_points(res))
        curves[name] = [list(p) for p in curve]
        finals.append({"spec": name, "budget_epochs": curve[-1][0], "val_loss": curve[-1][1],
                       "best_k_on_val_diagnostic": min(l for _, l in diagnostic)})
    for name, res in candidates:
        try:
            curves[f"{name} (K={k})"] = [list(p) for p in fixed_k_curve(merge_points(res), k)]
        except ValueError:
            pass  # the candidate never evaluated K: compare_populations reports why
    out = {
        "baseline": base_name,
        "baseline_k": k,
        "k_rule": HEADLINE_RULE,
        "diagnostic_rule": DIAGNOSTIC_RULE,
        "finals": finals,
        "comparisons": [{**with_seeds(baseline, res), "reference": base_name, "candidate": name} for name, res in candidates],
        "curves": curves,
        "data_efficiency": None,
    }
    if reference_data is not None:
        points = reference_points(reference_data)
        out["data_efficiency"] = [
            {"spec": f["spec"], **data_efficiency(points, f["val_loss"], base_tokens=data_tokens(flatten_results(res)[0]))}
            for f, (_, res) in zip(finals, named)
        ]
    return out


def _mean_sd(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "n": n, "values": values}


def with_seeds(baseline: Mapping, candidate: Mapping) -> dict:
    """`compare_populations` of the candidate (a seeded spec: its mean-over-seeds curve) plus, for a
    spec swept over `seed`, each seed's comparison summarised as mean ± sd under `seeds`:
    `ratio` and `matched_k_ratio` over the seeds that reach the target (`reached` says how many),
    and the final headline loss."""
    out = compare_populations(baseline, candidate)
    pops = seed_populations(candidate)
    if pops is None:
        return out
    per_seed = [compare_populations(baseline, pop) for pop in pops]
    finals = [headline_curve(pop["curve"])[-1][1] for pop in pops]
    summary = {"seeds": [pop["values"]["seed"] for pop in pops], "final_loss": _mean_sd(finals)}
    for key, get in (("ratio", lambda c: c["epochs_to_match"]["ratio"]), ("matched_k_ratio", lambda c: c["matched_k_ratio"]),
                     ("ratio_with_teacher", lambda c: c["with_teacher_forwards"]["ratio"])):
        values = [get(c) for c in per_seed]
        reached = [v for v in values if v is not None]
        summary[key] = {**(_mean_sd(reached) if reached else {"mean": None, "sd": None, "n": 0, "values": []}),
                        "reached": f"{len(reached)}/{len(values)}"}
    return {**out, "seeds": summary}


def _pm(stat: Mapping, unit: str = "×") -> str:
    if stat.get("mean") is None:
        return "n/a"
    sd = "" if stat.get("sd") is None else f" ± {stat['sd']:.{2 if unit else 4}f}"
    return f"{stat['mean']:.{2 if unit else 4}f}{unit}{sd}"


def render_table(result: Mapping, console) -> None:
    from rich.table import Table
    from rich.text import Text

    from hepc.report.render import comparison_rows
    from hepc.wording import SIGN_NOTE

    finals = Table(title="final losses (val nats/token; K = all, weights from held-out)",
                   caption="diagnostic column: best K chosen on val at any budget (optimistic; never used for a ratio); "
                           "lower = better")
    for col in ("spec", "budget (epochs)", "val loss", "best K on val (diagnostic)"):
        finals.add_column(col, justify="right")
    for f in result["finals"]:
        finals.add_row(Text(f["spec"]), f"{f['budget_epochs']:g}", f"{f['val_loss']:.4f}",
                       f"{f['best_k_on_val_diagnostic']:.4f}")
    console.print(finals, markup=False)
    if result["comparisons"]:
        table = Table(
            title=Text(f"against the baseline {result['baseline']} (ensemble size K={result['baseline_k']})"),
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
            if "seeds" in c:
                s = c["seeds"]
                cells = [f"{name} {_pm(s[key])} ({s[key]['reached']} seeds reach it)"
                         for name, key in (("ratio", "ratio"), ("K ratio", "matched_k_ratio"))]
                console.print(f"{c['candidate']} over seeds {s['seeds']}: final loss {_pm(s['final_loss'], '')}, "
                              + ", ".join(cells), markup=False)
    for eff in result.get("data_efficiency") or []:
        if eff["multiplier"] is not None:
            console.print(f"{eff['spec']}: data efficiency {eff['multiplier']:.2f}× "
                          f"({eff['tokens']:,.0f} tokens of fresh data reach its loss {eff['loss']:.4f})", markup=False)
        else:
            console.print(f"{eff['spec']}: data efficiency not measurable: {eff['note']}", markup=False)
