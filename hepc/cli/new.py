"""`hepc new` (a spec for a budget, from a recipe template) and `hepc schema` (the spec's JSON schema)."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from hepc.cli.app import (  # noqa: F401
    app,
    stdout,
    user_errors,
)
from hepc.errors import HepcError


@app.command()
@user_errors
def new(
    budget: Annotated[float, typer.Option("--budget", help="Epoch budget B (P·C·E).")],
    template: Annotated[str, typer.Option("--template", help="Template in templates/recipes/.")] = "q0",
    saturation: Annotated[
        float, typer.Option("--saturation", help="Epochs at which a lone model saturates on this data (S).")
    ] = 16.0,
    name: Annotated[str | None, typer.Option("--name", help="Spec name (default: TEMPLATE-bB).")] = None,
    out: Annotated[str | None, typer.Option("--out", help="Write the spec here instead of stdout.")] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", metavar="FROM_SPEC", help="Copy the data section of this spec (paths rebased onto --out's folder)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Render a ready spec for a budget from a recipe template (rules in hepc/spec/recipes.py)."""
    import tempfile
    from pathlib import Path

    from hepc.spec.load import load_spec
    from hepc.spec.recipes import render

    target = Path(out) if out else None
    folder = target.parent if target else Path.cwd()
    if not folder.is_dir():
        raise HepcError(f"--out {out}: folder {folder} does not exist")
    if target is not None and (target.is_dir() and not target.is_symlink()):
        raise HepcError(f"--out {out} is a folder: give a file name for the spec")
    if target is not None and os.path.lexists(target) and not force:
        raise HepcError(f"--out {out} exists: hepc new replaces nothing unless told to (--force)")
    text = render(budget, saturation, template, name, data_from=data, out_dir=folder)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=folder, delete=False) as f:
        f.write(text)
    try:
        load_spec(f.name)  # a template that renders an invalid spec is a bug worth a located message
    except BaseException:
        Path(f.name).unlink()  # nothing is written on error
        raise
    if target:
        Path(f.name).replace(target)
    else:
        Path(f.name).unlink()
    if target:
        print(target)
    else:
        print(text, end="")


@app.command()
def schema() -> None:
    """Print the JSON schema of a population spec."""
    from hepc.spec.schema import spec_schema

    print(json.dumps(spec_schema(), indent=1))
