"""Budget recipes: how to spend B epochs on a q0 population (docs/method.md §10), rendered from a jinja2
template in `templates/recipes/` inside a sandboxed environment.

The rules, in terms of S = the epochs at which a lone model saturates on this data:
- epochs per cycle E = S / 8 (the reference run: S ≈ 16, E = 2), and never more than B / 4, so
  even a small budget yields at least four snapshots; rounded to a multiple of 1/8 epoch;
- trajectories P: 1 while B ≤ 8·S, 2 while B ≤ 32·S, then 4. Measured in the reproduction's protocol
  v2 (docs/repro-notes.md; protocol v3 measures it again, paired, as its P = 2 / 4 ablations): up to
  8·S one long chain beat P = 2 and 4 at equal budget, since every extra trajectory repeats the first
  S epochs before its snapshots help; the paper's reference run uses P = 5 at 960 epochs (60·S).
  Trajectories buy diversity, cycles buy depth;
- cycles C = B / (P·E), rounded, at least 1;
- chain distillation from cycle c0 + 1 with c0·E ≈ S (distil once a chain has trained as long
  as a lone model can usefully train); none when C ≤ c0;
- budgets K: powers of two up to P·C, plus all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from hepc.errors import HepcError
from hepc.templating import TEMPLATES, sandboxed_env
from hepc.wording import count

# S measured for the templates' own data and model (pystdlib, specs/repro/single.yaml); any other
# S, or data copied from another spec with --data, is stated in the header as given, not as measured.
MEASURED_SATURATION = 16.0
BATCH_TOKENS = 1024  # the templates' batch, rounded to a multiple of the data's seq_len
PATH_KEYS = ("paths", "val_paths", "exclude")  # source fields that hold files or globs relative to the spec


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


def render(
    budget: float,
    saturation: float,
    template: str = "q0",
    name: str | None = None,
    data_from: str | None = None,
    out_dir: Path | None = None,
) -> str:
    """The spec text for `budget` epochs from `templates/recipes/<template>.yaml.j2`. With `data_from`
    (a spec file), its data section replaces the template's, its relative paths rebased onto
    `out_dir` (the folder the new spec is written to; default: the current folder)."""
    from jinja2.exceptions import TemplateError, TemplateNotFound

    folder = TEMPLATES / "recipes"
    env = sandboxed_env(folder, autoescape=False, keep_trailing_newline=True)
    env.filters["count"] = count
    r = recipe(budget, saturation)
    data = copied_data(data_from, Path.cwd() if out_dir is None else out_dir) if data_from else None
    try:
        tpl = env.get_template(f"{template}.yaml.j2")
    except TemplateNotFound:
        known = sorted(p.name.removesuffix(".yaml.j2") for p in folder.glob("*.yaml.j2"))
        raise HepcError(f"unknown template '{template}' (known: {', '.join(known) or 'none'}; folder {folder})") from None
    try:
        return tpl.render(
            r=asdict(r),
            actual_epochs=r.actual_epochs,
            name=name or f"{template}-b{budget:g}",
            measured=data is None and saturation == MEASURED_SATURATION,
            data_from=data_from,
            data_yaml=_data_yaml(data) if data else None,
            batch_tokens=_batch_tokens(data) if data else BATCH_TOKENS,
        )
    except TemplateError as e:
        raise HepcError(f"template {template}: {e}") from None


def copied_data(spec_path: str, out_dir: Path) -> dict:
    """The data section of the spec at `spec_path` (validated; defaults left out), its relative file
    paths and globs rewritten relative to `out_dir`, so the new spec reads the same files."""
    import os

    from hepc.spec.load import load_spec

    loaded = load_spec(spec_path)  # a bad spec is a located SpecError, as for any command
    data = loaded.spec.data.model_dump(mode="json", exclude_defaults=True)
    for k in ("train_tokens", "val_tokens", "heldout_tokens", "seq_len"):  # required: always present
        data[k] = getattr(loaded.spec.data, k)
    source = data.get("source", {})
    for key in PATH_KEYS:
        if isinstance(source.get(key), list):
            source[key] = [
                p if os.path.isabs(p) else Path(os.path.relpath(loaded.base_dir / p, out_dir)).as_posix()
                for p in source[key]
            ]
    return data


def _data_yaml(data: dict) -> str:
    import io

    from ruamel.yaml import YAML

    y = YAML(typ="safe", pure=True)
    y.default_flow_style = None  # block mappings, short lists inline
    y.sort_base_mapping_type_on_output = False
    buf = io.StringIO()
    y.dump({"data": data}, buf)
    return buf.getvalue().rstrip("\n")


def _batch_tokens(data: dict) -> int:
    """BATCH_TOKENS rounded to a multiple of seq_len, at most one epoch of training sequences."""
    seq_len = int(data["seq_len"])
    sequences = (int(data["train_tokens"]) - int(data["heldout_tokens"])) // (seq_len + 1)
    return seq_len * max(1, min(round(BATCH_TOKENS / seq_len), sequences))
