"""Budget recipes: how to spend B epochs on a q0 population (docs/method.md §10), rendered from a jinja2
template in `templates/recipes/` inside a sandboxed environment.

The rules, in terms of S = the epochs at which a lone model saturates on this data:
- epochs per cycle E = S / 8 (the reference run: S ≈ 16, E = 2), and never more than B / 4, so
  even a small budget yields at least four snapshots; rounded to a multiple of 1/8 epoch;
- trajectories P: 1 while B ≤ 8·S, 2 while B ≤ 32·S, then 4. Measured (docs/results.md,
  docs/repro-notes.md): up to 8·S one long chain beats P = 2 and 4 at equal budget, since every
  extra trajectory repeats the first S epochs before its snapshots help; the paper's reference run
  uses P = 5 at 960 epochs (60·S). Trajectories buy diversity, cycles buy depth;
- cycles C = B / (P·E), rounded, at least 1;
- chain distillation from cycle c0 + 1 with c0·E ≈ S (distil once a chain has trained as long
  as a lone model can usefully train); none when C ≤ c0;
- budgets K: powers of two up to P·C, plus all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from hepc.errors import HepcError
from hepc.templating import TEMPLATES, sandboxed_env


@dataclass(frozen=True)
class Recipe:
    budget_epochs: float
    saturation_epochs: float
    trajectories: int
    cycles: int
    epochs_per_cycle: float
    distill_after_cycles: int | None
    budgets: list

    @property
    def actual_epochs(self) -> float:
        return self.trajectories * self.cycles * self.epochs_per_cycle


def recipe(budget: float, saturation: float) -> Recipe:
    if budget <= 0 or saturation <= 0:
        raise HepcError("--budget and --saturation must be > 0")
    e = min(saturation / 8, budget / 4)
    e = max(1 / 8, round(e * 8) / 8)
    p = 1 if budget <= 8 * saturation else 2 if budget <= 32 * saturation else 4
    c = max(1, round(budget / (p * e)))
    c0 = max(1, round(saturation / e))
    distill = c0 if c > c0 else None
    members = p * c
    ks = [k for k in (2 ** i for i in range(int(math.log2(members)) + 1)) if k < members]
    return Recipe(budget, saturation, p, c, e, distill, [*ks, "all"])


def render(budget: float, saturation: float, template: str = "q0", name: str | None = None) -> str:
    """The spec text for `budget` epochs from `templates/recipes/<template>.yaml.j2`."""
    from jinja2.exceptions import TemplateError, TemplateNotFound

    folder = TEMPLATES / "recipes"
    env = sandboxed_env(folder, autoescape=False, keep_trailing_newline=True)
    r = recipe(budget, saturation)
    try:
        tpl = env.get_template(f"{template}.yaml.j2")
    except TemplateNotFound:
        known = sorted(p.name.removesuffix(".yaml.j2") for p in folder.glob("*.yaml.j2"))
        raise HepcError(f"unknown template '{template}' (known: {', '.join(known) or 'none'}; folder {folder})") from None
    try:
        return tpl.render(r=asdict(r), actual_epochs=r.actual_epochs, name=name or f"{template}-b{budget:g}")
    except TemplateError as e:
        raise HepcError(f"template {template}: {e}") from None
