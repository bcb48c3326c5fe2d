"""Read a population's results back from the store: members, top-K ensembles, the loss curve."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from hepc.compile.compiler import Compiled, Population
from hepc.errors import HepcError
from hepc.store.objects import Store
from hepc.wording import SIGN_NOTE, count


def collect(compiled: Compiled, store: Store) -> dict:
    """The results of a compiled spec; raises if its prior/curve steps have not run yet.

    One population: a flat dict (`members`, `ensembles`, `curve`, …). A sweep: `{"spec",
    "populations": [flat dict with `label` and `values`, …]}`.
    """
    rows = [collect_population(compiled, pop, store) for pop in compiled.populations]
    if len(rows) == 1:
        return rows[0]
    return {"spec": compiled.spec.name, "populations": rows}


def where_store(store: Store) -> str:
    """The store's absolute path and what is there, for "no results" messages."""
    root = store.root.resolve()
    if not root.exists():
        return f"{root} (no store there)"
    return str(root)


def elsewhere(compiled: Compiled, pop: Population, store: Store) -> str:
    """What to do next: the other stores beside the spec, in its parent folders or in those of the
    current folder that hold this population's results, else `hepc run`. (The store read is --store,
    else $HEPC_STORE, else the spec's runtime.store, else ./runs of the folder the command runs in.)"""
    from hepc.store.layout import DEFAULT_STORE, MARKER

    step = compiled.graph[pop.prior_key]
    base = compiled.graph[pop.corpus_key].context.get("base_dir")
    here = store.root.resolve()
    folders = [Path(base)] if base else []
    folders += [Path.cwd()]
    seen, holding, other = set(), [], []
    for start in folders:
        for folder in [start, *list(start.parents)[:8]]:
            candidate = (folder / DEFAULT_STORE).resolve()
            if candidate in seen or candidate == here or not (candidate / MARKER).is_file():
                continue
            seen.add(candidate)
            (holding if Store(candidate).find(step) is not None else other).append(candidate)
    if holding:
        return (f"; store {holding[0]} holds them: add `--store {holding[0]}` (a store is --store, $HEPC_STORE, "
                "the spec's runtime.store, else ./runs of the folder you run hepc in)")
    found = f"; other stores found, without them: {', '.join(map(str, other[:3]))}" if other else ""
    return f" (run `hepc run` first; `hepc plan` shows what is missing){found}"


def collect_population(compiled: Compiled, pop: Population, store: Store) -> dict:
    graph = compiled.graph
    prior_dir = store.find_intact(graph[pop.prior_key])  # a damaged object is named, never shown
    curve_dir = store.find_intact(graph[pop.curve_key])
    if prior_dir is None or curve_dir is None:
        which = f" (population {pop.label})" if pop.label else ""
        raise HepcError(
            f"no results yet for spec '{compiled.spec.name}'{which} in store {where_store(store)}"
            + elsewhere(compiled, pop, store)
        )
    prior = store.read_object_json(prior_dir, "prior.json")
    curve = store.read_object_json(curve_dir, "curve.json")
    members = [{**m, **chain_figures(store, graph[mb.cycle_key])} for m, mb in zip(prior["members"], pop.members)]
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
    digests = (store.read_object_json(corpus_dir, "meta.json").get("digests") or {}) if corpus_dir else {}
    return {
        "spec": compiled.spec.name,
        "split": "val",  # where `val_loss` fields were scored (`on_split` reads them on test)
        "label": pop.label,
        "values": pop.values,
        "seed": pop.spec.seed,
        "budget_epochs": pop.totals["epochs"],
        "trained_tokens_per_epoch": pop.totals["trained_tokens_per_epoch"],
        "split_digests": digests,
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


def chain_figures(store: Store, cycle) -> dict:
    """What a member's cycle recorded of its training, to read a chain cycle by cycle beside its val
    loss: `train_ce` (the training cross-entropy over the cycle's last tenth of steps, dropout on) and,
    for a distilled cycle, `train_kd` (its T²·KL to the teacher over the same steps)."""
    path = store.find(cycle)
    summary = (store.manifest(path) or {}).get("summary") or {} if path is not None else {}
    ce = summary.get("final_ce", summary.get("final_loss"))
    return {"train_ce": ce if isinstance(ce, float) else None,
            "train_kd": summary.get("final_kd") if isinstance(summary.get("final_kd"), float) else None}


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


def on_split(results: dict, split: str) -> dict:
    """The results read on `split` ("val" or "test"): every `val_loss`/`val_bpb` of the members, ensembles
    and curve points replaced by that split's, with `split` set. The best member and the best ensemble
    stay the ones chosen on val, shown with their `split` figures. A HepcError when it was not scored there."""
    if split == "val":
        return results
    if "populations" in results:
        return {**results, "populations": [on_split(p, split) for p in results["populations"]]}

    def read(row: dict) -> dict:
        if f"{split}_loss" not in row:
            raise HepcError(f"spec '{results['spec']}' has no {split} split (data.{split}_tokens is 0): "
                            f"nothing was scored on {split}")
        return {**row, "val_loss": row[f"{split}_loss"], "val_bpb": row.get(f"{split}_bpb")}

    members = [read(m) for m in results["members"]]
    ensembles = [read(e) for e in results["ensembles"]]
    best = results["best_single"]
    chosen = next(m for m in members if (m["trajectory"], m["cycle"]) == (best["trajectory"], best["cycle"]))
    best_e = results["best_ensemble"]
    chosen_e = next(e for e in ensembles if e["k_label"] == best_e["k_label"])
    return {**results, "split": split, "members": members, "ensembles": ensembles,
            "curve": [read(p) for p in results["curve"]],
            "best_single": {k: chosen[k] for k in ("trajectory", "cycle", "val_loss", "val_bpb")},
            "best_ensemble": {k: chosen_e[k] for k in ("k", "k_label", "val_loss", "val_bpb")}}


def populations(results: dict) -> list[dict]:
    """The per-population result dicts of `collect`'s output, whichever shape it has."""
    return results.get("populations", [results])


def render(results: dict, console, *, members: bool = False) -> None:
    """Print the results with rich (to stdout), one block per population: the ensembles, the loss
    curve (a table of val loss per budget and K) and the best member; the table of every member only
    with `members`."""
    for pop in populations(results):
        render_population(pop, console, members=members)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


CURVE_ROWS = 16  # budgets shown in the curve table; a longer curve shows an even spread of them


def _k_order(label) -> tuple:
    return (1, 0) if str(label) == "all" else (0, int(label))


def shown_budgets(budgets: list[float], limit: int = CURVE_ROWS) -> list[float]:
    """All budgets when there are at most `limit`; else `limit` of them spread evenly by index,
    the first and the last always included."""
    if len(budgets) <= limit:
        return budgets
    picks = {round(i * (len(budgets) - 1) / (limit - 1)) for i in range(limit)}
    return [budgets[i] for i in sorted(picks)]


def curve_table(points: list[dict], title: str, split: str = "val"):
    """The loss-vs-budget curve as a rich table: one row per budget (epochs summed over the members
    trained by then), one column per K the prior evaluated (val loss, nats/token). K = all (or the
    largest K) at each budget is the headline curve that `hepc compare` uses."""
    from rich.table import Table

    from hepc.report.curves import headline_label

    budgets = sorted({float(p["budget_epochs"]) for p in points})
    shown = shown_budgets(budgets)
    labels = sorted({str(p["k_label"]) for p in points}, key=_k_order)
    headline = str(headline_label(points))
    cells = {(float(p["budget_epochs"]), str(p["k_label"])): p for p in points}
    members = {}
    for p in points:
        b = float(p["budget_epochs"])
        members[b] = max(members.get(b, 0), int(p["members"]))
    more = "" if len(shown) == len(budgets) else f"; {len(shown)} of {len(budgets)} budgets shown (--json has all)"
    table = Table(
        title=Text(f"{title}: loss vs budget ({split} loss, nats/token)"),
        caption=Text(f"K = {headline} is the headline curve (weights fitted on held-out){more}"),
    )
    table.add_column("budget (epochs)", justify="right")
    table.add_column("members", justify="right")
    for label in labels:
        table.add_column(f"K={label}" + (" (headline)" if label == headline else ""), justify="right")
    for b in shown:
        row = [f"{b:g}", str(members[b])]
        row += [_fmt(cells[(b, label)]["val_loss"]) if (b, label) in cells else "" for label in labels]
        table.add_row(*row)
    return table


def render_population(results: dict, console, *, members: bool = False) -> None:
    from rich.table import Table

    title = results["spec"] + (f" [{results['label']}]" if results.get("label") else "")
    fmt = _fmt
    split = results.get("split", "val")
    if members:
        table = Table(title=Text(f"{title}: members ({split} loss, nats/token)"),
                      caption=Text("train CE / KD: the cycle's training loss parts over its last tenth of steps "
                                   "(dropout on): a chain whose train CE falls while its members' loss rises memorises"))
        for col in ("traj", "cycle", "cost (epochs)", "weight", "train CE", "train KD", f"{split} loss", f"{split} bpb"):
            table.add_column(col, justify="right")
        for m in results["members"]:
            table.add_row(
                str(m["trajectory"]), str(m["cycle"]), f"{m['cost_epochs']:g}", f"{m['weight']:.3f}",
                fmt(m.get("train_ce")), fmt(m.get("train_kd")), f"{m['val_loss']:.4f}", fmt(m["val_bpb"]),
            )
        console.print(table)

    prior, aggregate = results["prior"]["kind"], results["aggregate"]
    ens = Table(
        title=Text(f"{title}: ensembles ({prior} prior, weighted {aggregate} averaging)"),
        caption=Text(f"{split} loss in {loss_unit(results.get('corpus'))}; vs best single = ensemble − best single snapshot "
                     f"({SIGN_NOTE}){'; best single chosen on val' if split != 'val' else ''}"),
    )
    for col in ("K", f"{split} loss", f"{split} bpb", "vs best single"):
        ens.add_column(col, justify="right")
    best = results["best_single"]["val_loss"]
    ens.add_row("1 (best single)", f"{best:.4f}", fmt(results["best_single"]["val_bpb"]), "")
    for e in results["ensembles"]:
        label = f"{e['k']}" + (" (all)" if e["k_label"] == "all" else "")
        ens.add_row(label, f"{e['val_loss']:.4f}", fmt(e["val_bpb"]), f"{e['val_loss'] - best:+.4f}")
    console.print(ens)
    if results["curve"]:
        console.print(curve_table(results["curve"], title, split))
    else:
        console.print(Text("curve: no points"))
    s = results["best_single"]
    console.print(Text(
        f"best member (on val): trajectory {s['trajectory']} cycle {s['cycle']}, {split} loss {s['val_loss']:.4f} "
        f"(of {count(len(results['members']), 'member')}; `--members` lists them all)"
    ))
    b = results["best_ensemble"]
    console.print(Text(
        f"budget {count(results['budget_epochs'], 'epoch')}: best ensemble (on val) K={b['k']} {split} loss {b['val_loss']:.4f} "
        f"vs best single snapshot {best:.4f} ({b['val_loss'] - best:+.4f} nats, {SIGN_NOTE}); "
        + fit_line(results["fit"])
    ))


def fit_line(fit: dict) -> str:
    """The prior's fit in one line: held-out NLL vs uniform, val NLL vs uniform (recorded by prior
    steps since the shrinkage prior; absent from older results), the shrinkage strength and folds."""
    line = f"prior fit on held-out {fit['nll']:.4f} vs uniform {fit['uniform_nll']:.4f}"
    if fit.get("val_nll") is not None and fit.get("uniform_val_nll") is not None:
        line += f"; prior on val {fit['val_nll']:.4f} vs uniform {fit['uniform_val_nll']:.4f}"
    if fit.get("test_nll") is not None:
        line += f"; on test {fit['test_nll']:.4f} vs uniform {fit['uniform_test_nll']:.4f}"
    if fit.get("strength") is not None:
        folds = f"{fit.get('folds')}-fold CV over {fit.get('fold_rule')}" if fit.get("folds") else "no CV"
        line += f" (shrinkage λ={fit['strength']:g}, {folds})"
    return line


def loss_unit(corpus_summary: dict | None) -> str:
    """The unit of a corpus's val losses for captions, from its corpus step summary (or meta.json):
    `nats/token`, and for a BPE corpus also how many bytes a val token holds (bpb = bits per byte)."""
    corpus_summary = corpus_summary or {}
    if (corpus_summary.get("tokenizer") or {}).get("kind") != "bpe":
        return "nats/token"
    bpt = (corpus_summary.get("bytes_per_token") or {}).get("val")
    held = f" of {bpt:.2f} bytes on val" if isinstance(bpt, (int, float)) else ""
    return f"nats/token (BPE tokens{held}; bpb = bits per byte)"
