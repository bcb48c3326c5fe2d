"""The `documents: {regex: ...}` engine: Python's `re` against the `regex` package hepc uses.

Over every file of the installed standard library (what the `pystdlib` source reads), with the
reproduction's definitions pattern by default: do both engines find exactly the same separators, and
how long does each take? Then the textbook runaway pattern `(a+)+$` on a 24-character line, where
`re` backtracks exponentially and `regex` does not.

    python bench/regex_split.py [--pattern PATTERN]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import regex

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hepc.data.identity import list_pystdlib, stdlib_root

DEFINITIONS = "\n(?=(?: {4}| {8})?(?:async def|def|class|@)[ \\w])|\n\n(?=\\S)"  # specs/repro's rule


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pattern", default=DEFINITIONS)
    args = ap.parse_args()
    a, b = re.compile(args.pattern), regex.compile(args.pattern)
    root = stdlib_root()
    texts = [(root / rel).read_bytes().decode("utf-8", "replace") for rel, _ in list_pystdlib(False, root)]
    t_re = t_regex = 0.0
    matches = differ = 0
    for text in texts:
        t0 = time.perf_counter()
        spans_a = [m.span() for m in a.finditer(text)]
        t1 = time.perf_counter()
        spans_b = [m.span() for m in b.finditer(text, timeout=10)]
        t2 = time.perf_counter()
        t_re, t_regex = t_re + t1 - t0, t_regex + t2 - t1
        matches += len(spans_a)
        differ += spans_a != spans_b
    chars = sum(len(t) for t in texts)
    print(f"{len(texts)} files, {chars:,} characters, {matches:,} separators; files where the engines differ: {differ}")
    print(f"re {t_re:.2f} s, regex {t_regex:.2f} s")
    line = "a" * 24 + "b"
    for name, engine in (("re", re), ("regex", regex)):
        t0 = time.perf_counter()
        engine.compile(r"(a+)+$").search(line)
        print(f"(a+)+$ on a 25-character line: {name} {time.perf_counter() - t0:.3f} s")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
