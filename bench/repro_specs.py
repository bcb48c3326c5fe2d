"""Write specs/repro/ (protocol v3) from the scale table below: every family, comparison and ablation of
the CPU reproduction as plain specs (docs/repro-notes.md says how each number was chosen).

    python bench/repro_specs.py            # rewrites specs/repro/{a,b,data}/*.yaml

The specs are what bench/repro.sh trains and `hepc compare` reads; this script only keeps them
consistent (one table, the same data section everywhere, seeds shared across arms). Edit the table,
rerun it, commit the specs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "specs" / "repro"
sys.path.insert(0, str(ROOT))

SEEDS = [100, 200, 300, 400, 500]  # shared by every arm: ensemble seed s has members s+1 … s+8, q0 seed s trajectory s+1
SOURCE = ('{kind: pystdlib, exclude: ["encodings/*", "pydoc_data/*", "html/entities.py", "idlelib/*"], '
          'documents: {regex: "\\n(?=(?: {4}| {8})?(?:async def|def|class|@)[ \\\\w])|\\n\\n(?=\\\\S)"}}')
VAL, TEST = 40_000, 40_000  # carved first: the same val and test arrays at every scale and data size

SCALES = {
    "a": {"label": "A", "data": 16_000, "heldout": 3_200, "heldout5": 800, "batch": 512,
          "model": {"n_layer": 3, "d_model": 96, "n_head": 4, "dropout": 0.1},
          "S": 16, "budget_S": 8, "base_wd": 1.5, "ens_wd": [0.5, 1.5, 4.0], "single_wd": [1.5, 4.0, 8.0],
          "q0_base_wd": 4.0, "q0_wd": [2.0, 4.0, 8.0, 12.0], "ablations": True},
    "b": {"label": "B", "data": 8_000, "heldout": 1_600, "heldout5": 400, "batch": 256,
          "model": {"n_layer": 2, "d_model": 64, "n_head": 4, "dropout": 0.1},
          "S": 32, "budget_S": 8, "base_wd": 1.5, "ens_wd": [0.5, 1.5, 4.0], "single_wd": [1.5, 4.0],
          "q0_base_wd": 4.0, "q0_wd": [2.0, 4.0, 8.0], "ablations": False},
}
MEMBER_LENGTHS = [1, 1.5, 2, 3, 4]  # × S: the independent ensemble's member lengths
DATA_SIZES = [8_000, 16_000, 32_000, 64_000, 128_000]  # trained tokens of the data-efficiency single models
DATA_EPOCHS = {8_000: [4, 8, 16, 32, 64], 16_000: [4, 8, 16, 32, 64], 32_000: [2, 4, 8, 16, 32],
               64_000: [2, 4, 8, 16], 128_000: [2, 4, 8]}  # more data saturates in fewer epochs
LR = 0.003


def header(lines: list[str], path: str) -> str:
    return "\n".join([f"# {line}" for line in lines] + [
        f"#   hepc run specs/repro/{path} --store runs/repro      (bench/repro.sh runs every spec)",
        "# Protocol v3 (docs/repro-notes.md); written by bench/repro_specs.py from its scale table.", ""])


def data_section(train: int, heldout: int, *, train_on_heldout: bool) -> str:
    extra = "\n  train_on_heldout: true          # equal data: trains on train + held-out (uniform prior)" if train_on_heldout else ""
    return f"""data:
  source: {SOURCE}
  tokenizer: bytes
  train_tokens: {train}
  heldout_tokens: {heldout}
  val_tokens: {VAL}
  test_tokens: {TEST}
  seq_len: 128
  max_doc_tokens: 512{extra}
"""


def spec(name: str, lines: list[str], path: str, *, train: int, heldout: int, model: dict, batch: int, wd: float,
         population: str, prior: str, sweep: dict, train_on_heldout: bool = False) -> str:
    sweep_text = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in sweep.items())
    return (header(lines, path) + f"version: 1\nname: {name}\nseed: {SEEDS[0]}\n"
            + data_section(train, heldout, train_on_heldout=train_on_heldout)
            + f"model: {json.dumps(model).replace(chr(34), '')}\n"
            + f"optimizer: {{kind: adamw, lr: {LR}, weight_decay: {wd}, batch_tokens: {batch}, grad_clip: 1.0, betas: [0.9, 0.95]}}\n"
            + population + prior + (f"sweep:\n{sweep_text}" if sweep else "")
            + "runtime: {device: cpu, threads: 1, checkpoint_every_steps: 500, log_every_steps: 100}\n")


def q0_population(s: dict, *, trajectories: int = 1, distill: bool = True, perturb: tuple | None = (0.25, 0.05),
                  wd_floor: float = 0.7) -> str:
    S, budget = s["S"], s["S"] * s["budget_S"]
    epochs = S / 2
    cycles = int(budget / (epochs * trajectories))
    out = (f"population:\n  trajectories: {trajectories}\n  cycles: {cycles}\n  epochs_per_cycle: {epochs:g}\n"
           f"  schedule: {{kind: cyclic, lr_floor: 0.08, wd_floor: {wd_floor}}}\n")
    if distill:
        out += "  distill: {after_cycles: 2, alpha: 0.45, temperature: 1.2}   # from S epochs on (2 cycles of S/2)\n"
    if perturb:
        out += f"  perturb: {{start: {perturb[0]}, end: {perturb[1]}, decay_cycles: 2}}\n"
    return out


def write(path: str, text: str) -> None:
    target = OUT / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def scale_specs(key: str, s: dict) -> None:
    from hepc.train.schedule import decay_efolds, steps_per_cycle

    S, budget = s["S"], s["S"] * s["budget_S"]
    m, d, h, b = s["model"], s["data"], s["heldout"], s["batch"]
    where = (f"Scale {s['label']}: {d:,} tokens of standard-library definitions (train + held-out), val and test "
             f"{VAL:,} each; a {m['n_layer']}-layer d={m['d_model']} byte GPT; batch {b}; S = {S} epochs.")
    seeds = {"seed": SEEDS}
    for mult in MEMBER_LENGTHS:
        epochs = mult * S
        members = int(budget // epochs)
        name = f"ens-{mult:g}s"
        write(f"{key}/{name}.yaml", spec(
            f"repro-{key}-{name}", [f"Independent ensemble: {members} members × {epochs:g} epochs ({mult:g}·S), uniform "
                                    f"average, equal data; tuned over weight decay (a family with the other ens-*).", where],
            f"{key}/{name}.yaml", train=d, heldout=h, model=m, batch=b, wd=s["base_wd"],
            population=(f"population:\n  trajectories: {members}\n  cycles: 1\n  epochs_per_cycle: {epochs:g}\n"
                        "  schedule: {kind: constant, warmdown: 0.2}\n"),
            prior="prior: {kind: uniform, budgets: [1, all]}\n",
            sweep={"optimizer.weight_decay": s["ens_wd"], **seeds}, train_on_heldout=True))
    single_epochs = sorted({S / 4, S / 2, *(mult * S for mult in MEMBER_LENGTHS), budget})  # up to the whole budget
    write(f"{key}/single.yaml", spec(
        f"repro-{key}-single", ["One model on all the data (train + held-out), over epochs and weight decay: the single-model "
                                "family (its runs at m·S are the ensembles' first members, shared by key).", where],
        f"{key}/single.yaml", train=d, heldout=h, model=m, batch=b, wd=s["base_wd"],
        population=("population:\n  trajectories: 1\n  cycles: 1\n  epochs_per_cycle: 16\n"
                    "  schedule: {kind: constant, warmdown: 0.2}\n"),
        prior="prior: {kind: uniform, budgets: [all]}\n",
        sweep={"population.epochs_per_cycle": [float(f"{e:g}") for e in single_epochs],
               "optimizer.weight_decay": s["single_wd"], **seeds}, train_on_heldout=True))
    steps = steps_per_cycle(S / 2, d - h, b)
    efolds = [decay_efolds({"kind": "cyclic", "lr_floor": 0.08, "wd_floor": 0.7}, steps, LR, w) for w in s["q0_wd"]]
    q0_note = (f"q0: 1 trajectory × {int(budget / (S / 2))} cycles of S/2 = {S / 2:g} epochs = {budget} epochs, distilled from "
               f"cycle 3, shrinkage prior on {h:,} held-out tokens; weight decay {s['q0_wd']}: "
               f"{', '.join(f'{e:.2f}' for e in efolds)} e-folds per cycle.")
    prior = "prior: {kind: shrinkage, budgets: [1, 2, 4, 8, all]}\n"
    variants = [("q0", h, "")] + ([("q0-h5", s["heldout5"], f" Held-out {s['heldout5']:,} tokens (5 %).")] if s["ablations"] else [])
    for name, heldout, extra in variants:
        wds = s["q0_wd"] if name == "q0" else [s["q0_base_wd"]]  # the 5 % variant at q0's base weight decay (compute)
        write(f"{key}/{name}.yaml", spec(
            f"repro-{key}-{name}", [q0_note + extra, where], f"{key}/{name}.yaml", train=d, heldout=heldout, model=m, batch=b,
            wd=s["q0_base_wd"], population=q0_population(s), prior=prior, sweep={"optimizer.weight_decay": wds, **seeds}))
    if not s["ablations"]:
        return
    base_wd = s["q0_base_wd"]
    base_efolds = efolds[s["q0_wd"].index(base_wd)]
    flat = decay_efolds({"kind": "cyclic", "lr_floor": 0.08, "wd_floor": 1.0}, steps, LR, 1.0)
    matched = round(base_efolds / flat, 4)
    ablations = {
        "abl-flatwd": (f"Flat weight decay (wd_floor 1) at q0's integrated decay: WD {matched} gives "
                       f"{base_efolds:.2f} e-folds per cycle, as q0's {base_wd} does.", {"wd_floor": 1.0}, matched),
        "abl-noperturb": ("No weight perturbation between cycles.", {"perturb": None}, base_wd),
        "abl-perturb2x": ("Perturbation scale doubled (0.5 → 0.1).", {"perturb": (0.5, 0.1)}, base_wd),
        "abl-alpha0": ("No chain distillation (alpha 0): every cycle plain cross-entropy.", {"distill": False}, base_wd),
        "abl-p2": ("P = 2 trajectories at the same budget.", {"trajectories": 2}, base_wd),
        "abl-p4": ("P = 4 trajectories at the same budget.", {"trajectories": 4}, base_wd),
    }
    for name, (what, change, wd) in ablations.items():
        write(f"{key}/{name}.yaml", spec(
            f"repro-{key}-{name}", [f"Ablation of q0 (weight decay {base_wd}): {what} Paired with q0 over the same seeds.",
                                    where], f"{key}/{name}.yaml", train=d, heldout=h, model=m, batch=b, wd=wd,
            population=q0_population(s, **change), prior=prior, sweep=seeds))


def data_specs() -> None:
    for key, s in SCALES.items():
        for size in DATA_SIZES:
            name = f"single-{key}-{size // 1000}k"
            write(f"data/{name}.yaml", spec(
                f"repro-data-{name}", [f"Data efficiency: one model of scale {s['label']}'s size ({s['model']['n_layer']}-layer "
                                       f"d={s['model']['d_model']}) on {size:,} trained tokens, over epochs; its best "
                                       "epoch count chosen on val.",
                                       "Val and test are the reproduction's (carved first, the same arrays)."],
                f"data/{name}.yaml", train=size, heldout=min(s["heldout"], size // 5), model=s["model"], batch=s["batch"],
                wd=s["base_wd"],
                population=("population:\n  trajectories: 1\n  cycles: 1\n  epochs_per_cycle: 16\n"
                            "  schedule: {kind: constant, warmdown: 0.2}\n"),
                prior="prior: {kind: uniform, budgets: [all]}\n",
                sweep={"population.epochs_per_cycle": DATA_EPOCHS[size]}, train_on_heldout=True))


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    for key, s in SCALES.items():
        scale_specs(key, s)
    data_specs()
    print(f"wrote {len(list(OUT.rglob('*.yaml')))} specs under {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
