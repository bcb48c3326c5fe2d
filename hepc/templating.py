"""The one place jinja2 environments are made: sandboxed, strict about undefined names.

Templates live in the repository's `templates/` folder (budget recipes, the report), so hepc runs
from a source checkout or an editable install.
"""

from __future__ import annotations

from pathlib import Path

from hepc.errors import HepcError

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def sandboxed_env(folder: Path, *, autoescape: bool, required: str | None = None, **options):
    """A `SandboxedEnvironment` loading from `folder`; `required` names a template that must exist."""
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    if required is not None and not (folder / required).is_file():
        raise HepcError(
            f"template not found: {folder / required} (hepc reads its templates from the repository's "
            f"templates/ folder; run from a source checkout or `pip install -e .`)"
        )
    return SandboxedEnvironment(
        loader=FileSystemLoader(str(folder)), autoescape=autoescape, undefined=StrictUndefined, **options
    )
