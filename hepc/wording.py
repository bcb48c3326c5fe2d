"""Small wording helpers for what hepc prints: counts with their noun, and text cut short politely."""

from __future__ import annotations

import math

# The one sign convention of every difference hepc prints (results, compare, report): new − reference.
SIGN_NOTE = "negative = better"


def count(n: float, noun: str, plural: str | None = None) -> str:
    """`n` with its noun, singular exactly when n == 1: "1 epoch", "0.5 epochs", "2 epochs",
    "12,800 tokens". Integers get thousands separators; other numbers print with `:g`."""
    one = isinstance(n, (int, float)) and not isinstance(n, bool) and n == 1
    if isinstance(n, float) and math.isfinite(n) and n.is_integer() and abs(n) < 1e15:
        text = f"{int(n):,}"
    elif isinstance(n, int) and not isinstance(n, bool):
        text = f"{n:,}"
    else:
        text = f"{n:g}" if isinstance(n, float) else str(n)
    return f"{text} {noun if one else plural or noun + 's'}"


def shorten(text: str, limit: int) -> str:
    """`text` on one line, at most `limit` characters: cut at a word boundary and ended with "…"
    when longer (a single word longer than the limit is cut inside it, still with "…")."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0) + 1]  # one character more: is the cut itself at a boundary?
    head = cut[:-1]
    if cut[-1] != " " and " " in head:
        head = head[: head.rindex(" ")]
    return head.rstrip(" ,;:") + "…"
