"""Data sources, tokenizers and corpus building.

`source_identity` and `DataError` are imported eagerly (no numpy: the compiler uses them on every
plan); `build_corpus` is loaded on first use.
"""

from hepc.data.identity import DataError, source_identity

__all__ = ["DataError", "build_corpus", "source_identity"]


def __getattr__(name: str):
    if name == "build_corpus":
        from hepc.data.corpus import build_corpus

        return build_corpus
    raise AttributeError(f"module 'hepc.data' has no attribute {name!r}")
