"""Families of configurations, each chosen on val per budget and read on any split.

A *family* is what a method is tuned over: the configurations of a sweep (every sweep variant, its
seeds aside), or several specs given one `--family NAME` on the command line. Each configuration has
one or more seeds; its curve is the mean over its seeds of the headline curve (K = all, weights from
held-out) at each budget all its seeds reach.

The family's curve (`Family.curve`), at each budget b of any of its configurations: among every
configuration and every budget b' <= b it has, the one with the lowest mean **val** loss (what a
practitioner tuning on val would pick with b epochs to spend); the figure is that choice's loss on
the requested split, mean over its seeds, and per seed for paired comparisons. On `test` nothing is
chosen on the figures shown; on `val` the chosen figure is optimistic (chosen on the same split), which
is why headlines are read on test. A family of one configuration with one budget per point (one q0
spec) is its raw curve wherever that keeps improving on val.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hepc.report.curves import flatten_results, headline_label

SPLITS = ("val", "test")


class MissingSplit(ValueError):
    """A family was not scored on the split asked for (its corpus has no such split)."""


def split_loss(point: Mapping, split: str) -> float:
    """A curve point's (or member's, ensemble's) loss on `split`; KeyError when it was not scored there."""
    key = f"{split}_loss"
    if key not in point:
        raise KeyError(split)
    return float(point[key])


def config_label(values: Mapping) -> str:
    """`epochs_per_cycle=24, weight_decay=3` from a population's sweep values, seed left out."""
    parts = [f"{k.rsplit('.', 1)[-1]}={_value(v)}" for k, v in sorted(values.items()) if k != "seed"]
    return ", ".join(parts)


def _value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


@dataclass
class Config:
    """One configuration of a family: its populations by seed (a `collect` population dict each)."""

    spec: str
    label: str
    seeds: dict = field(default_factory=dict)  # seed → population dict

    @property
    def name(self) -> str:
        return f"{self.spec} [{self.label}]" if self.label else self.spec

    def headline(self, split: str) -> dict[float, dict]:
        """budget → {"val": mean val loss, "loss": mean loss on split, "per_seed": {seed: loss}, "members"}
        at the budgets every seed has (the headline K of each seed's curve)."""
        per_seed = {seed: _headline_points(pop["curve"]) for seed, pop in self.seeds.items()}
        budgets = set.intersection(*(set(p) for p in per_seed.values())) if per_seed else set()
        out = {}
        for b in sorted(budgets):
            points = {seed: per_seed[seed][b] for seed in per_seed}
            out[b] = {
                "val": _mean(split_loss(p, "val") for p in points.values()),
                "loss": _mean(split_loss(p, split) for p in points.values()),
                "per_seed": {seed: split_loss(p, split) for seed, p in points.items()},
                "members": max(int(p["members"]) for p in points.values()),
            }
        return out


def _mean(values) -> float:
    xs = list(values)
    return sum(xs) / len(xs)


def _headline_points(points: Sequence[Mapping]) -> dict[float, Mapping]:
    """budget → the headline point there (K = all, or the largest K while fewer members exist)."""
    label = headline_label(points)
    out: dict[float, Mapping] = {}
    for p in points:
        b = float(p["budget_epochs"])
        if label == "all":
            if p["k_label"] == "all":
                out[b] = p
        elif int(p["k"]) == min(int(label), int(p["members"])) and (b not in out or int(p["k"]) > int(out[b]["k"])):
            out[b] = p
    return out


@dataclass
class Family:
    """A named set of configurations (see the module docstring)."""

    name: str
    configs: list[Config]
    results: list[Mapping] = field(default_factory=list)  # the `collect` outputs it was built from

    @classmethod
    def from_results(cls, name: str, results: Sequence[Mapping]) -> Family:
        """Configurations from `collect` outputs: one per distinct (spec, non-seed sweep values)."""
        configs: dict[tuple, Config] = {}
        for res in results:
            for pop in flatten_results(res):
                values = pop.get("values") or {}
                label = config_label(values)
                spec = pop.get("spec") or res.get("spec") or name
                key = (spec, label)
                config = configs.setdefault(key, Config(spec, label))
                seed = values.get("seed", pop.get("seed"))
                if seed in config.seeds:  # two populations of one configuration and seed: a second spec
                    key = (spec, label, len(configs))
                    config = configs.setdefault(key, Config(spec, f"{label} #{len(configs)}".strip()))
                config.seeds[seed] = pop
        return cls(name, list(configs.values()), list(results))

    @property
    def seeds(self) -> list:
        return sorted({s for c in self.configs for s in c.seeds}, key=str)

    def has_split(self, split: str) -> bool:
        try:
            for c in self.configs:
                c.headline(split)
        except KeyError:
            return False
        return True

    def curve(self, split: str = "val") -> list[dict]:
        """The family's curve: one point per budget, [{"budget", "loss", "val", "per_seed", "config",
        "at_budget", "members"}], each the lowest-val (configuration, budget <= b) (module docstring)."""
        table = [(c, b, row) for c in self.configs for b, row in c.headline(split).items()]
        if not table:
            raise ValueError(f"family {self.name} has no curve points")
        out = []
        for budget in sorted({b for _, b, _ in table}):
            config, at, row = min(((c, b, r) for c, b, r in table if b <= budget), key=lambda x: (x[2]["val"], x[1]))
            out.append({"budget": budget, "loss": row["loss"], "val": row["val"], "per_seed": row["per_seed"],
                        "config": config.name, "at_budget": at, "members": row["members"]})
        return out

    def choices(self, split: str = "val") -> list[dict]:
        """Where the family's choice changes along its curve: [{"from_budget", "config", "at_budget"}]."""
        out, last = [], None
        for p in self.curve(split):
            if (p["config"], p["at_budget"]) != last:
                out.append({"from_budget": p["budget"], "config": p["config"], "at_budget": p["at_budget"]})
                last = (p["config"], p["at_budget"])
        return out

    def config_of(self, name: str) -> Config:
        return next(c for c in self.configs if c.name == name)


def as_curve_pairs(points: Sequence[Mapping]) -> list[tuple[float, float]]:
    return [(p["budget"], p["loss"]) for p in points]


def per_seed_curves(points: Sequence[Mapping]) -> dict:
    """seed → [(budget, loss)] over the budgets at which the chosen configuration has that seed."""
    out: dict = {}
    for p in points:
        for seed, loss in p["per_seed"].items():
            out.setdefault(seed, []).append((p["budget"], loss))
    return out


def saturation(family: Family) -> dict | None:
    """For a family holding single models (one trajectory, one cycle): the budget of their best mean val
    loss (S) and whether it is the largest budget measured (still improving: not saturated). None when
    the family has no single-model configuration."""
    singles = []
    for c in family.configs:
        pop = next(iter(c.seeds.values()))
        if len(pop.get("members") or []) == 1:
            for b, row in c.headline("val").items():
                singles.append((row["val"], b))
    if not singles:
        return None
    loss, budget = min(singles)
    largest = max(b for _, b in singles)
    return {"epochs": budget, "val_loss": loss, "largest": largest, "saturated": budget < largest}


def grid_edges(family: Family, split: str = "val") -> list[str]:
    """Where the family's choice at its largest budget sits at the edge of a swept numeric setting
    (its smallest or largest value, with two or more values tried): the best value may lie outside
    the grid, so the family may be under-tuned there. One line per such setting."""
    curve = family.curve(split)
    if not curve:
        return []
    chosen = family.config_of(curve[-1]["config"])
    values = (next(iter(chosen.seeds.values())).get("values") or {}) if chosen.seeds else {}
    def number(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    out = []
    for key, value in sorted(values.items()):
        if key == "seed" or not number(value):
            continue
        tried = sorted({
            v for c in family.configs if c.spec == chosen.spec
            for pop in c.seeds.values() if number(v := (pop.get("values") or {}).get(key))
        })  # fmt: skip
        if len(tried) < 2 or min(tried) < value < max(tried):
            continue
        side = "smallest" if value == min(tried) else "largest"
        name = key.rsplit(".", 1)[-1]
        out.append(f"{family.name}: chosen at {curve[-1]['budget']:g} epochs with {name}={_value(value)}, the {side} "
                   f"value tried ({', '.join(_value(v) for v in tried)}): the best may lie outside the grid")
    return out


def trained_tokens(family: Family) -> list[int]:
    """Tokens per epoch its configurations train on (distinct values)."""
    return sorted({int(pop.get("trained_tokens_per_epoch") or 0) for c in family.configs for pop in c.seeds.values()})


def finite(x) -> bool:
    return x is not None and math.isfinite(x)
