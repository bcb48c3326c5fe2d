"""Paths into a spec tree and where they are: ("prior", "budgets", 2) ↔ `prior.budgets[2]` ↔ `file:line:col`."""

from __future__ import annotations

Path_ = tuple  # a path into the spec tree: ("population", "cycles") or ("prior", "budgets", 2)


def parse_dotted(text: str) -> Path_:
    """`data.source.paths[1]` → ("data", "source", "paths", 1)."""
    out: list = []
    for part in text.split("."):
        name, _, rest = part.partition("[")
        if name:
            out.append(name)
        for idx in rest.replace("]", "").split("[") if rest else []:
            out.append(int(idx) if idx.isdigit() else idx)
    return tuple(out)


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def locate(path: Path_, locations: dict, filename: str) -> str:
    for n in range(len(path), -1, -1):
        if path[:n] in locations:
            return locations[path[:n]]
    return filename
