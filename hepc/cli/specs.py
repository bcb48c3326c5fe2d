"""Several specs on one command line, each with its own `key=value` overrides (`compare`, `report`,
`diff`).

    hepc compare base.yaml q0.yaml population.cycles=8    # the override applies to q0.yaml only
    hepc diff q0.yaml q0.yaml::population.cycles=8        # the same override, written onto the spec

An argument `KEY=VALUE` (a dotted key, then `=`, the value parsed as YAML as for `hepc run`) applies
to the spec before it; `SPEC::KEY=VALUE` is that spec with that override (`SPEC::A=1::B=2` with two),
and more `KEY=VALUE` arguments may follow it. An argument that names an existing file is always a spec.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from hepc.errors import Problem, SpecError

OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=")
SEPARATOR = "::"
EXAMPLE = "e.g. `hepc compare base.yaml q0.yaml population.cycles=8` or `q0.yaml::population.cycles=8`"


@dataclass(frozen=True)
class SpecRef:
    """One spec of the command line and the overrides that follow it."""

    path: str
    overrides: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """`q0.yaml` or `q0.yaml::population.cycles=8::prior.kind=uniform`."""
        return SEPARATOR.join((self.path, *self.overrides))


def is_override(arg: str) -> bool:
    return bool(OVERRIDE.match(arg)) and not os.path.isfile(arg)


def spec_args(args: list[str] | tuple[str, ...]) -> list[SpecRef]:
    """Group `args` into specs and their overrides; a `key=value` before any spec is an error."""
    out: list[tuple[str, list[str]]] = []
    problems = []
    for arg in args:
        if is_override(arg):
            if not out:
                problems.append(Problem(f"argument '{arg}'", "", f"a key=value override follows the spec it applies to ({EXAMPLE})"))
                continue
            out[-1][1].append(arg)
            continue
        path, *rest = arg.split(SEPARATOR)
        if rest and not all(OVERRIDE.match(r) for r in rest):
            problems.append(Problem(f"argument '{arg}'", "", f"expected SPEC{SEPARATOR}key=value after '{SEPARATOR}' ({EXAMPLE})"))
            continue
        out.append((path, rest))
    if problems:
        raise SpecError(problems)
    return [SpecRef(path, tuple(overrides)) for path, overrides in out]


def display_names(names: list[str], specs: list[SpecRef]) -> list[str]:
    """Names for a table: the spec's name, with its overrides when it has any ("q0 (population.cycles=8)"),
    and a number when two are still the same ("q0 #2")."""
    out: list[str] = []
    for name, spec in zip(names, specs):
        text = f"{name} ({', '.join(spec.overrides)})" if spec.overrides else name
        base, n = text, 2
        while text in out:
            text, n = f"{base} #{n}", n + 1
        out.append(text)
    return out


def family_args(options: list[str] | None) -> list[tuple[str, SpecRef]]:
    """`--family NAME=SPEC` options (SPEC may carry `::key=value` overrides) as (name, spec) pairs, in order."""
    out, problems = [], []
    for opt in options or []:
        name, sep, spec = opt.partition("=")
        if not sep or not name or not spec or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            problems.append(Problem(f"--family '{opt}'", "", "expected NAME=SPEC, e.g. --family tuned=specs/repro/ensemble.yaml"))
            continue
        out.extend((name, ref) for ref in spec_args([spec]))
    if problems:
        raise SpecError(problems)
    return out


def check_same_splits(named: list[tuple[str, dict]], split: str) -> None:
    """Refuse (SpecError) to compare results whose val tokens differ, or whose `split` tokens differ:
    a gap between losses on different data is no comparison. `named`: (name, `collect` output)."""
    from hepc.report.curves import flatten_results

    seen: dict[str, tuple[str, str]] = {}
    for name, res in named:
        for pop in flatten_results(res):
            digests = pop.get("split_digests") or {}
            for which in dict.fromkeys(("val", split)):
                digest = digests.get(which)
                if digest is None:
                    continue
                first = seen.setdefault(which, (name, digest))
                if first[1] != digest:
                    raise SpecError(
                        f"{first[0]} and {name} are scored on different {which} tokens (another corpus, tokenizer or "
                        f"split): their losses cannot be compared; give them the same data section"
                    )
