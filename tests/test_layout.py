"""The package layout a newcomer reads: packages by concern, no import cycles, no oversized module,
and the README's annotated tree naming every package and module that exists."""

from __future__ import annotations

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "hepc"
MAX_LINES = 500
TOP_LEVEL = {"__init__.py", "errors.py", "hashing.py", "wording.py", "sizes.py", "templating.py"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every hepc module `name` imports, at the top or inside a function (a cycle through a lazy import
    is still a cycle in the design); `from pkg import mod` counts as importing the module."""

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            if not target.startswith("hepc"):
                continue
            module = resolve(target)
            if module not in (None, name, "hepc"):  # `hepc` itself: the lazy public API (load_ensemble)
                found.add(module)
    return found


def test_no_import_cycles():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_the_cycle_check_sees_a_cycle(tmp_path):
    # the check above can fail: two modules that import each other are found
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from hepc.b import x\n")
    b.write_text("def f():\n    from hepc.a import y\n")
    known = {"hepc.a": a, "hepc.b": b}
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert graph == {"hepc.a": {"hepc.b"}, "hepc.b": {"hepc.a"}}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError:
        return
    raise AssertionError("the cycle was not found")


def test_no_module_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_top_level_holds_packages_and_a_handful_of_shared_modules():
    files = {p.name for p in PKG.iterdir() if p.suffix == ".py"}
    assert files <= TOP_LEVEL, f"modules at the top of hepc/ that belong in a package: {sorted(files - TOP_LEVEL)}"
    for package in (p for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"):
        init = package / "__init__.py"
        assert init.is_file(), f"{package.name}/ is not a package"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and doc.strip(), f"hepc/{package.name}/__init__.py has no docstring saying what the package is for"


def test_readme_tree_names_every_package_and_module():
    readme = (ROOT / "README.md").read_text()
    tree = readme[readme.index("\nhepc/ ") :]
    tree = tree[: tree.index("\nspecs/")]
    named, stack = set(), []
    for line in tree.splitlines()[1:]:
        m = re.match(r"^( +)(\S+)", line)
        if not m or m.group(2).startswith(("(", "`")) or not re.match(r"^[\w.]+/?$", m.group(2)):
            continue
        depth = len(m.group(1)) // 2
        stack[depth - 1 :] = [m.group(2).rstrip("/")]
        named.add("/".join(stack[:depth]))
    present = {str(p.relative_to(PKG).with_suffix(".py")) for p in PKG.rglob("*.py") if p.name != "__init__.py"}
    present |= {str(p.relative_to(PKG)) for p in PKG.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    listed_files = {n for n in named if n.endswith(".py")}
    packages_described_whole = {n for n in named if not n.endswith(".py") and not any(f.startswith(n + "/") for f in named)}
    missing = {p for p in present if p not in named and not any(p.startswith(d + "/") for d in packages_described_whole)}
    assert not missing, f"README's tree does not name: {sorted(missing)}"
    stale = {n for n in listed_files if n not in present}
    assert not stale, f"README's tree names modules that do not exist: {sorted(stale)}"


def test_every_name_the_benchmarks_and_docs_import_from_hepc_exists():
    """bench/ scripts run only by hand: a moved module must not break them unseen (one did, in the
    package split). Every `from hepc.x import y` in bench/*.py resolves to a module or attribute."""
    import importlib

    missing = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "hepc":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{path.name}:{node.lineno}: {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "hepc":
                        importlib.import_module(alias.name)
    assert not missing, missing
