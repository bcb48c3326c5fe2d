"""The repository explains itself: nothing in it sends a reader to files outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"\.\./shared|(?<![\w/])(?:method|architecture|calibration|style)\.md")


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [ROOT / line for line in out.splitlines()]
    return [f for f in files if f.suffix in {".py", ".md", ".j2", ".yaml", ".yml", ".toml", ".sh", ".txt"} and f.is_file()]


def test_no_reference_to_design_files_outside_the_repository():
    offenders = []
    for f in tracked_text_files():
        if f == Path(__file__):
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in OUTSIDE.finditer(line):
                # `docs/method.md` and links relative to docs/ (method.md inside docs/) are the project's own
                own = "docs/method.md" in line or f.parent.name == "docs" or line.strip().startswith("method.md ")
                if m.group(0) == "method.md" and own:  # docs/method.md (or the README tree's docs/ entry)
                    continue
                offenders.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert offenders == [], "\n".join(offenders)
    assert (ROOT / "docs" / "method.md").is_file()
