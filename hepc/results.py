"""Read a population's results back from the store: members, top-K ensembles, the loss curve."""

from __future__ import annotations

from hepc.compile import Compiled, Population
from hepc.errors import HepcError
from hepc.store import Store


def collect(compiled: Compiled, store: Store) -> dict:
    """The results of a compiled spec; raises if its prior/curve steps have not run yet.

    One population: a flat dict (`members`, `ensembles`, `curve`, …). A sweep: `{"spec",
    "populations": [flat dict with `label` and `values`, …]}`.
    """
    rows = [collect_population(compiled, pop, store) for pop in compiled.populations]
    if len(rows) == 1:
        return rows[0]
    return {"spec": compiled.spec.name, "populations": rows}


def collect_population(compiled: Compiled, pop: Population, store: Store) -> dict:
    graph = compiled.graph
    prior_dir = store.find_intact(graph[pop.prior_key])  # a damaged object is named, never shown
    curve_dir = store.find_intact(graph[pop.curve_key])
    if prior_dir is None or curve_dir is None:
        which = f" (population {pop.label})" if pop.label else ""
        raise HepcError(
            f"no results yet for spec '{compiled.spec.name}'{which} in store {store.root} "
            f"(run `hepc run` first; `hepc plan` shows what is missing)"
        )
    prior = store.read_object_json(prior_dir, "prior.json")
    curve = store.read_object_json(curve_dir, "curve.json")
    members = prior["members"]
    ensembles, aggregate = prior["ensembles"], "probability"
    if pop.logits_key is not None:
        logits_dir = store.find_intact(graph[pop.logits_key])
        if logits_dir is None:
            raise HepcError(f"no logit-averaged results yet for spec '{compiled.spec.name}' (run `hepc run`)")
        ensembles, aggregate = store.read_object_json(logits_dir, "logits.json")["ensembles"], "logit"
    points = [{**p, "aggregate": "probability"} for p in curve["points"]]
    if aggregate == "logit":
        points = _logit_final_points(points, ensembles, len(members))
    best_single = min(members, key=lambda m: m["val_loss"])
    best_ensemble = min(ensembles, key=lambda e: e["val_loss"])
    corpus_dir = store.find_intact(graph[pop.corpus_key])
    corpus = store.manifest(corpus_dir)["summary"] if corpus_dir else {}
    return {
        "spec": compiled.spec.name,
        "label": pop.label,
        "values": pop.values,
        "budget_epochs": pop.totals["epochs"],
        "prior": prior["prior"],
        "fit": prior["fit"],
        "members": members,
        "aggregate": aggregate,
        "ensembles": ensembles,
        "curve": points,
        "best_single": {k: best_single[k] for k in ("trajectory", "cycle", "val_loss", "val_bpb")},
        "best_ensemble": {k: best_ensemble[k] for k in ("k", "k_label", "val_loss", "val_bpb")},
        "corpus": corpus,
        "teacher_costs": teacher_costs(pop, graph),
    }


def teacher_costs(pop: Population, graph) -> list[list[float]]:
    """``[[epochs, epochs_with_teacher], ...]`` at each member's budget: training epochs against
    training epochs plus teacher forwards, a teacher forward counted by its FLOP share of a training
    pass (1/3). Budgets count training passes only (the paper's rule); this table lets a comparison
    show the cost with teacher forwards beside it."""
    rows, total = [], 0.0
    for mb in sorted(pop.members, key=lambda m: m.cost_epochs):
        ctx = graph[mb.cycle_key].context
        share = ctx["teacher_flops"] / ctx["flops"] if ctx.get("flops") else 0.0
        total += ctx["epochs"] * (1.0 + share)
        rows.append([float(mb.cost_epochs), round(total, 9)])
    return rows


def _logit_final_points(points: list[dict], ensembles: list[dict], n_members: int) -> list[dict]:
    """The curve step averages the stored per-token target probabilities, which cannot give a
    logit average; the logits step re-runs the final top-K members. So at the full-population
    budget each K takes its logit-averaged loss; earlier points stay probability-averaged (each
    point says which)."""
    logit = {str(e["k_label"]): e for e in ensembles}
    out = []
    for p in points:
        e = logit.get(str(p["k_label"])) if p["members"] == n_members else None
        out.append(p if e is None else {**p, "val_loss": e["val_loss"], "val_bpb": e["val_bpb"], "aggregate": "logit"})
    return out


def populations(results: dict) -> list[dict]:
    """The per-population result dicts of `collect`'s output, whichever shape it has."""
    return results.get("populations", [results])


def render(results: dict, console, *, members: bool = False) -> None:
    """Print the results with rich (to stdout), one block per population: the ensembles, the loss
    curve in one line and the best member; the table of every member only with `members`."""
    for pop in populations(results):
        render_population(pop, console, members=members)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def curve_line(points: list[dict]) -> str:
    """The loss curve in one line: how many points over which budgets, and the best loss at the first
    and the last budget."""
    if not points:
        return "curve: no points"
    budgets = sorted({p["budget_epochs"] for p in points})

    def best_at(b):
        p = min((p for p in points if p["budget_epochs"] == b), key=lambda p: p["val_loss"])
        return f"{b:g} epochs ({p['members']} members): {p['val_loss']:.4f} at K={p['k_label']}"

    first, last = best_at(budgets[0]), best_at(budgets[-1])
    return f"curve: {len(points)} points over {len(budgets)} budgets; best {first} → {last}"


def render_population(results: dict, console, *, members: bool = False) -> None:
    from rich.table import Table

    title = results["spec"] + (f" [{results['label']}]" if results.get("label") else "")
    fmt = _fmt
    if members:
        table = Table(title=f"{title}: members (val loss, nats/token)")
        for col in ("traj", "cycle", "cost (epochs)", "weight", "val loss", "val bpb"):
            table.add_column(col, justify="right")
        for m in results["members"]:
            table.add_row(
                str(m["trajectory"]), str(m["cycle"]), f"{m['cost_epochs']:g}", f"{m['weight']:.3f}",
                f"{m['val_loss']:.4f}", fmt(m["val_bpb"]),
            )
        console.print(table)

    prior, aggregate = results["prior"]["kind"], results["aggregate"]
    ens = Table(title=f"{title}: ensembles ({prior} prior, weighted {aggregate} averaging)")
    for col in ("K", "val loss", "val bpb", "vs best single"):
        ens.add_column(col, justify="right")
    best = results["best_single"]["val_loss"]
    ens.add_row("1 (best single)", f"{best:.4f}", fmt(results["best_single"]["val_bpb"]), "")
    for e in results["ensembles"]:
        label = f"{e['k']}" + (" (all)" if e["k_label"] == "all" else "")
        ens.add_row(label, f"{e['val_loss']:.4f}", fmt(e["val_bpb"]), f"{e['val_loss'] - best:+.4f}")
    console.print(ens)
    console.print(curve_line(results["curve"]))
    s = results["best_single"]
    console.print(
        f"best member: trajectory {s['trajectory']} cycle {s['cycle']}, val loss {s['val_loss']:.4f} "
        f"(of {len(results['members'])} members; `--members` lists them all)"
    )
    b = results["best_ensemble"]
    console.print(
        f"budget {results['budget_epochs']:g} epochs: best ensemble K={b['k']} val loss {b['val_loss']:.4f} "
        f"vs best single snapshot {best:.4f} ({b['val_loss'] - best:+.4f} nats); " + fit_line(results["fit"])
    )


def fit_line(fit: dict) -> str:
    """The prior's fit in one line: held-out NLL vs uniform, val NLL vs uniform (recorded by prior
    steps since the shrinkage prior; absent from older results), the shrinkage strength and folds."""
    line = f"prior fit on held-out {fit['nll']:.4f} vs uniform {fit['uniform_nll']:.4f}"
    if fit.get("val_nll") is not None and fit.get("uniform_val_nll") is not None:
        line += f"; prior on val {fit['val_nll']:.4f} vs uniform {fit['uniform_val_nll']:.4f}"
    if fit.get("strength") is not None:
        folds = f"{fit.get('folds')}-fold CV over {fit.get('fold_rule')}" if fit.get("folds") else "no CV"
        line += f" (shrinkage λ={fit['strength']:g}, {folds})"
    return line
