"""Build a corpus: read a source's documents, cut them into pieces, carve val, test, held-out and train.

The split rule is hepc/data/carve.py (whole documents ordered by a seeded hash of their content,
duplicates dropped, carved in that order); the pieces of each source kind come from
hepc/data/pieces.py, and a BPE corpus's from hepc/data/bpe_training.py. docs/data-splits.md has the
rule with measured figures.

A `tokens` source with `val_paths` brings its own val: the first val_tokens ids of its validation
shards, unshuffled; then nothing is carved for val and the documents fill test, held-out and train.

Outputs: `<split>.npy` (token ids) and `<split>_docs.npy` (start offsets of its pieces) for every
split (test empty when test_tokens is 0), and meta.json: sizes, bytes per token, per-split documents
and their largest documents with the largest one's share, duplicates dropped, tokens dropped where
documents were cut; for a text source, the tokens each split takes from each file (`tokens_by_file`,
by the file's index in `source.files`) and the UTF-8 bytes of each file's documents
(`file_text_bytes`), from which `hepc data` gives each split's share of the files' compressed and
decompressed bytes.

Memory: the pieces carving may need, their ids and their index, lie in scratch files under
`scratch_dir` (hepc/data/spill.py); each split's ids are written to its `.npy` as carving takes
them, `CHUNK` ids at a time, hashed and counted on the way, and its pieces' offsets and statistics
are recorded as they are taken (hepc/data/taken.py: 8 bytes a document taken stay in memory), so
neither a split nor an array of its pieces is ever in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xxhash

from hepc.data import shards, synthetic
from hepc.data.carve import (
    DEFAULT_MAX_DOC_TOKENS,
    SPLITS,
    NotEnough,
    Piece,
    PieceSource,
    carve,
    check_sizes,
    not_enough_error,
    split_targets,
)
from hepc.data.identity import source_identity
from hepc.data.pieces import file_source, synthetic_source, tokens_source
from hepc.data.spill import ScratchDir
from hepc.data.taken import Offsets, SplitStats
from hepc.data.tokenizers import make_tokenizer, token_dtype

CHUNK = 1 << 16  # ids of a split written, hashed and counted at a time

__all__ = ["DEFAULT_MAX_DOC_TOKENS", "SPLITS", "build_corpus"]


def build_corpus(
    source_cfg: dict,
    tokenizer_cfg: dict,
    *,
    train_tokens: int,
    val_tokens: int,
    heldout_tokens: int,
    seed: int,
    base_dir: Path,
    out_dir: Path,
    max_doc_tokens: int | None = DEFAULT_MAX_DOC_TOKENS,
    test_tokens: int = 0,
    tokenizer_dir: Path | None = None,
    scratch_dir: Path | None = None,
) -> dict:
    """Write every split's token arrays, their `*_docs.npy` offsets and meta.json to out_dir; return the meta.

    `tokenizer_dir`: the committed `tokenizer` step of a `bpe` tokenizer (hepc/data/bpe_training.py).
    `scratch_dir`: where the scratch files go (the step's work folder; the system's temporary folder
    when None), removed when this returns or raises."""
    check_sizes(train_tokens, val_tokens, heldout_tokens, max_doc_tokens, test_tokens)
    with ScratchDir(scratch_dir) as scratch:
        return _build(source_cfg, tokenizer_cfg, train_tokens, val_tokens, heldout_tokens, seed, Path(base_dir),
                      Path(out_dir), max_doc_tokens, test_tokens, tokenizer_dir, scratch)


def _build(source_cfg, tokenizer_cfg, train_tokens, val_tokens, heldout_tokens, seed, base_dir: Path, out_dir: Path,
           max_doc_tokens, test_tokens, tokenizer_dir, scratch: ScratchDir) -> dict:
    tokenizer = make_tokenizer(tokenizer_cfg, source_cfg, trained=tokenizer_dir)
    bpe = tokenizer.config.get("kind") == "bpe"
    identity = source_identity(source_cfg, base_dir)
    given_val = shards.read_val(source_cfg, base_dir, val_tokens) if shards.has_val_paths(source_cfg) else None
    targets = split_targets(train_tokens, 0 if given_val is not None else val_tokens, heldout_tokens, test_tokens)
    kind = source_cfg.get("kind")
    cap = None if kind == "synthetic" else max_doc_tokens
    if bpe:  # pieces cut in bytes, ordered as for `bytes`, then encoded
        from hepc.data import bpe_training

        source = bpe_training.corpus_source(source_cfg, tokenizer, base_dir, seed, cap, targets, scratch)
    elif kind == "synthetic":
        source = synthetic_source(source_cfg, tokenizer, seed)
    elif kind == "tokens":
        source = tokens_source(source_cfg, base_dir, seed, cap, tokenizer.eot_id, targets, scratch)
    else:
        source = file_source(source_cfg, tokenizer, base_dir, seed, cap, targets, scratch)

    dtype = token_dtype(tokenizer.vocab_size)
    sizes = {**targets, "val": given_val.size if given_val is not None else targets["val"]}
    files = _SplitFiles(out_dir, dtype, sizes, getattr(tokenizer, "token_bytes", None))
    taken = _Taken(files, targets, scratch, source, bpe_training.Unseen(tokenizer_dir) if bpe else None)
    try:
        try:
            carved = carve(source.pieces, targets, sink=taken.add)
        except NotEnough as e:
            raise not_enough_error(source, e, targets, given_val is None) from None
        trained_on = taken.unseen.result() if bpe else None
        val_starts, pieces, splits = None, {}, {}
        for name in SPLITS:
            if name == "val" and given_val is not None:
                files.write("val", given_val)
                val_starts = shards.document_starts(given_val, tokenizer.eot_id)
                pieces["val"] = int(val_starts.size)
                splits["val"] = _val_stats(val_starts, given_val.size, scratch)
            else:
                pieces[name] = len(taken.offsets[name])
                splits[name] = taken.stats[name].result()
                splits[name]["tokens_dropped"] = carved.dropped[name]  # the rest of the document that filled it
                if source.file_of is not None:
                    splits[name]["tokens_by_file"] = taken.stats[name].tokens_by_file()
        written = files.close()
        for name in SPLITS:
            if name == "val" and val_starts is not None:
                np.save(out_dir / "val_docs.npy", val_starts)
            else:
                taken.offsets[name].save(out_dir / f"{name}_docs.npy")
    except BaseException:
        files.discard()
        raise
    names = {name: splits[name].pop("names") for name in SPLITS}
    for name in SPLITS:
        others = np.unique(np.concatenate([names[other] for other in SPLITS if other != name]))
        splits[name]["source_documents_in_other_splits"] = int(np.intersect1d(names[name], others).size)  # 0: the rule's check

    n_bytes, bytes_per_token = {}, {}
    for name in SPLITS:
        n_bytes[name], bytes_per_token[name] = written[name].byte_stats(tokenizer)
        splits[name]["bytes"] = n_bytes[name]
    meta = {
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "tokenizer": tokenizer.config,
        "seed": seed,
        "tokens": {name: written[name].count for name in SPLITS},
        "bytes": n_bytes,
        "bytes_per_token": bytes_per_token,
        "documents": pieces,
        "tokens_dropped": sum(carved.dropped.values()),
        "max_doc_tokens": cap,
        "split_rule": source.rule,
        "source_documents": source.documents,
        "source_pieces": source.pieces_total,
        "source_tokens": source.tokens,
        "duplicates": source.duplicates,
        "splits": splits,
        "digests": {name: written[name].digest for name in SPLITS if written[name].count},  # what compare guards
        "source": identity,
    }
    if source.file_text_bytes is not None:  # what `hepc data` weighs each file's compressed and decompressed bytes by
        meta["file_text_bytes"] = [source.file_text_bytes.get(i, 0) for i in range(len(identity.get("files") or []))]
    if given_val is not None:
        meta["val_note"] = "val is the first val_tokens ids of the val_paths shards, unshuffled, its documents as they come"
    if kind == "tokens":
        meta["bytes_note"] = "pre-tokenized: bytes = tokens x the configured bytes_per_token (null when not given)"
    if trained_on is not None:
        meta["tokenizer_training"] = trained_on
    if kind == "synthetic":
        meta.update(synthetic.entropy_meta(source_cfg))
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class _SplitFile:
    """One split's token ids written to `<split>.npy` as they come (the header first: the split's size is
    known), `CHUNK` ids at a time, each chunk hashed and its bytes counted on the way: the bytes np.save
    of the whole array would write, and its digest (xxh3_128 of the ids as int64, their values whatever
    the dtype: equal digests = the same split)."""

    def __init__(self, path: Path, dtype: np.dtype, size: int, token_bytes: np.ndarray | None):
        self.path, self.size, self._token_bytes = path, size, token_bytes
        self._file = open(path, "wb")  # noqa: SIM115 (written across calls, closed by close or discard)
        np.lib.format.write_array_header_1_0(
            self._file, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (size,)})
        self._buffer = np.empty(min(CHUNK, max(size, 1)), dtype=dtype)
        self._fill = 0
        self._hash = xxhash.xxh3_128()
        self.count = 0
        self.bytes = 0

    def add(self, ids: np.ndarray) -> None:
        at = 0
        while at < ids.size:
            take = min(ids.size - at, self._buffer.size - self._fill)
            self._buffer[self._fill : self._fill + take] = ids[at : at + take]
            self._fill += take
            at += take
            if self._fill == self._buffer.size:
                self._flush()

    def _flush(self) -> None:
        chunk = self._buffer[: self._fill]
        self._file.write(chunk)
        self._hash.update(np.ascontiguousarray(chunk, dtype="<i8"))
        if self._token_bytes is not None:
            self.bytes += int(self._token_bytes[chunk].sum())
        self.count += self._fill
        self._fill = 0

    def close(self) -> None:
        self._flush()
        self._file.close()
        if self.count != self.size:  # the header says `size`: a bug, never a silently short array
            raise RuntimeError(f"{self.path.name}: {self.count} ids written, {self.size} expected")

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def byte_stats(self, tokenizer) -> tuple[int | None, float | None]:
        """The tokenizer's byte_stats of the whole split, from the counts of its chunks."""
        if self._token_bytes is None:  # bytes from the size alone (pre-tokenized: tokens x bytes_per_token)
            return tokenizer.byte_stats(np.broadcast_to(np.zeros(1, self._buffer.dtype), (self.count,)))
        return self.bytes, (self.bytes / self.count if self.count else None)


class _SplitFiles:
    """Every split's `_SplitFile`, opened as its first ids come (in carving order), all written at `close`."""

    def __init__(self, out_dir: Path, dtype: np.dtype, sizes: dict[str, int], token_bytes: np.ndarray | None):
        self.out_dir, self.dtype, self.sizes, self.token_bytes = out_dir, dtype, sizes, token_bytes
        self.files: dict[str, _SplitFile] = {}
        self._made_dir = not out_dir.exists()

    def _file(self, name: str) -> _SplitFile:
        if name not in self.files:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.files[name] = _SplitFile(self.out_dir / f"{name}.npy", self.dtype, self.sizes[name], self.token_bytes)
        return self.files[name]

    def add(self, name: str, piece: Piece, n: int) -> None:
        self._file(name).add(piece.ids[:n])

    def write(self, name: str, ids: np.ndarray) -> None:
        self._file(name).add(ids)

    def close(self) -> dict[str, _SplitFile]:
        for name in SPLITS:
            self._file(name).close()
        return self.files

    def discard(self) -> None:
        """Remove what was written (a failed step leaves no partial split)."""
        for name, split in self.files.items():
            split._file.close()
            split.path.unlink(missing_ok=True)
            (self.out_dir / f"{name}_docs.npy").unlink(missing_ok=True)
        if self._made_dir:
            try:
                self.out_dir.rmdir()
            except OSError:
                pass


class _Taken:
    """Carving's sink: each piece taken goes to its split's `.npy` (`files`), its `_docs.npy` offsets and its
    statistics (hepc/data/taken.py), and for a BPE corpus to the check that the tokenizer never saw val,
    test or held-out (`unseen`): nothing of a split's pieces is kept in memory."""

    def __init__(self, files: _SplitFiles, targets: dict, scratch: ScratchDir, source: PieceSource, unseen=None):
        self.files, self.unseen = files, unseen
        self.offsets = {name: Offsets(scratch) for name in targets}
        self.stats = {name: SplitStats(scratch, source.name, source.file_of) for name in targets}

    def add(self, name: str, piece: Piece, n: int) -> None:
        self.files.add(name, piece, n)
        self.offsets[name].add(n)
        self.stats[name].add(piece.doc, n)
        if self.unseen is not None:
            self.unseen.add(name, piece)


def _val_stats(starts: np.ndarray, size: int, scratch: ScratchDir) -> dict:
    """The statistics of a `val_paths` val: its documents start at `starts`, it holds `size` ids."""
    stats = SplitStats(scratch, lambda j: f"val_paths document {j}")
    for j, n in enumerate(np.diff(np.append(starts, size)).tolist()):
        stats.add(j, n)
    return {**stats.result(), "tokens_dropped": 0}
