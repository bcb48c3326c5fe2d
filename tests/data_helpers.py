"""Shared by the data tests: the tiny spec with its data source and split sizes replaced."""

from __future__ import annotations

import re
from pathlib import Path

TINY = Path(__file__).parent / "fixtures" / "tiny.yaml"
SOURCE_LINE = "  source: {kind: synthetic, alphabet_size: 16, order: 2, concentration: 0.2, doc_tokens: 200, seed: 0}\n"


def spec_file(tmp_path: Path, source: str, **data) -> Path:
    """tests/fixtures/tiny.yaml with `data.source: SOURCE` and the given data sizes, as tmp_path/spec.yaml."""
    sizes = {"train_tokens": 12000, "val_tokens": 2000, "heldout_tokens": 1000, **data}
    text = TINY.read_text().replace(SOURCE_LINE, f"  source: {source}\n")
    assert f"  source: {source}\n" in text, "the tiny spec's source line changed"
    for key, value in sizes.items():
        text = re.sub(rf"(?m)^  {key}: .*$", f"  {key}: {value}", text)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path
