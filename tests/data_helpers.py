"""Shared by the data tests: the tiny spec with its data source and split sizes replaced, and the split
rule of docs/data-splits.md written out plainly over whole documents (the reference the streamed corpus
builder must equal)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import xxhash

from hepc.data.carve import doc_keys, n_pieces

EOT = 256

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


def reference_corpus(docs: list[tuple[str, bytes]], cap: int | None, seed: int, sizes: dict) -> tuple[dict, dict, dict]:
    """The split rule applied plainly to whole documents (name, UTF-8 bytes) in listing order, bytes
    tokenizer: order by the seeded key of each content digest (listing index on ties), drop exact
    duplicates after the first, cut pieces (end-of-text, then up to cap - 1 bytes), fill val, test,
    held-out and train in turn with whole documents, dropping the rest of the one that fills a split.

    Returns (arrays and *_docs offsets per split, document names per split, a subset of meta.json)."""
    width = None if cap is None else cap - 1
    digests = [xxhash.xxh3_128_intdigest(text) for _, text in docs]
    keys = doc_keys(digests, seed)
    order, seen = [], set()
    for i in sorted(range(len(docs)), key=lambda i: (int(keys[i]), i)):
        if digests[i] not in seen:
            seen.add(digests[i])
            order.append(i)
    ordered = iter(order)
    targets = {"val": sizes["val_tokens"], "test": sizes.get("test_tokens", 0), "heldout": sizes["heldout_tokens"],
               "train": sizes["train_tokens"] - sizes["heldout_tokens"]}
    arrays, names, dropped = {}, {}, 0
    for split, target in targets.items():
        parts, taken, filled = [], [], 0
        while filled < target:
            name, text = docs[next(ordered)]
            taken.append(name)
            count = n_pieces(len(text) + 1, cap)
            for k in range(count):
                body = text if width is None else text[k * width : (k + 1) * width]
                ids = np.concatenate([[EOT], np.frombuffer(body, np.uint8)]).astype(np.uint16)
                parts.append(ids[: target - filled])
                filled += len(parts[-1])
                if filled >= target:  # the rest of this document is in no split
                    dropped += len(text) + count - sum(len(p) for p in parts[-(k + 1):])
                    break
        arrays[split] = np.concatenate(parts) if parts else np.zeros(0, np.uint16)
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        arrays[f"{split}_docs"] = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if parts else lengths
        names[split] = taken
    meta = {
        "tokens": {n: int(arrays[n].size) for n in targets},
        "bytes": {n: int((arrays[n] != EOT).sum()) for n in targets},
        "documents": {n: int(arrays[f"{n}_docs"].size) for n in targets},
        "tokens_dropped": dropped,
        "source_documents": len(docs),
        "source_pieces": sum(n_pieces(len(text) + 1, cap) for _, text in docs),
        "source_tokens": sum(len(text) + n_pieces(len(text) + 1, cap) for _, text in docs),
    }
    return arrays, names, meta
