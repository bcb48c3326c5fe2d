"""`hepc schema`: the spec's JSON schema, with each field's docstring as its description.

The models do not ask pydantic to read those docstrings (`use_attribute_docstrings`): that reads
and parses the models' source on every import, which every command pays for. Only this command
needs them, so it reads them here, the same way: a string literal right after a field."""

from __future__ import annotations

import ast
import inspect
from itertools import pairwise


def attribute_docs(module) -> dict[str, dict[str, str]]:
    """{class name: {field: docstring}} for the classes of `module`."""
    tree = ast.parse(inspect.getsource(module))
    out: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs: dict[str, str] = {}
        for stmt, after in pairwise(node.body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(after.value.value)
        out[node.name] = docs
    return out


def spec_schema() -> dict:
    from hepc.spec import data_models, models

    schema = models.Spec.model_json_schema()
    docs = {**attribute_docs(data_models), **attribute_docs(models)}
    for name, definition in [("Spec", schema), *schema.get("$defs", {}).items()]:
        properties = definition.get("properties", {})
        for field, doc in docs.get(name, {}).items():
            if field in properties:
                properties[field]["description"] = doc
    return schema
