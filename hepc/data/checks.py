"""Input checks of a spec's data, for `hepc validate` and `hepc plan`: located problems, nothing written.

`input_problems(spec, base_dir)` looks at the files a `text` or `tokens` source lists without
building anything: each `paths` entry on its own (a glob that matches nothing, a directory, a missing
or special file), `exclude` (an entry that matches nothing is a warning; removing every file an
error), the encoding (unknown: error), and for text the first 64 KiB of every file (NUL characters or
bytes that do not decode in the declared encoding: binary, an error naming the file, located at the
`paths` entry that reached it); an empty file is a warning, all files empty an error. Last, whether
the files can hold the splits (val_tokens + test_tokens + train_tokens, heldout included in train) with the bytes
tokenizer: exact for the default `file` rule in UTF-8 (file sizes), exact for any other rule or
encoding when the files hold at most `EXACT_ROOM_BYTES` (every document is read as the corpus reads
it, duplicates counted once), an upper bound beyond that (4 UTF-8 bytes per file byte, one
end-of-text per byte), so that only a corpus that is surely too small is refused. With a BPE the
count is known only once the tokenizer is trained: a corpus too small for its splits is then a
located error of the run's corpus step (`data.train_tokens`, exit 2).

A text or JSON Lines file compressed with gzip, xz, bz2 or zstd (hepc/data/compressed.py) is checked
on its decompressed bytes: the binary check on its first 64 KiB decompressed, its JSON Lines head,
and its decompressed size for the splits (the size comes with its digest, cached by the file's stat
signature, so that only a file not seen before is decompressed whole). A damaged archive is a
located error naming the compressed byte offset; a compressed file whose decompressed bytes are not
text is binary.

JSON Lines (`documents: {jsonl: FIELD}`): besides the above, every line that starts in the first
`JSONL_HEAD` bytes of each file must be blank or a JSON object whose FIELD is a string (an error
naming the file and the line; the build checks the rest of a longer file the same way). Parquet
(`{parquet: COLUMN}`): no binary check (Parquet is binary); each file's footer must read as Parquet
with a string COLUMN, and its row groups' statistics must count no nulls in it (an error naming the
file and the row group); a file without rows is a warning. The room check is exact for a Parquet
file of at most `PARQUET_EXACT` bytes (its column is read) and skipped for a larger one.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable
from pathlib import Path

from hepc.data.compressed import content_digest, flush_cache, open_data
from hepc.data.identity import (
    DataError,
    DataFile,
    choose_files,
    documents_rule,
    list_pattern,
    open_regular,
    with_compression,
)
from hepc.errors import Problem

HEAD = 64 << 10  # bytes of each text file that are checked for binary content
EXACT_ROOM_BYTES = 64 << 20  # up to this many bytes of text, the room check reads every document (as the run will)
UNSPLIT_MIN = 2 << 10  # a file with at least this much text where the documents rule matches nothing is named
JSONL_HEAD = 4 << 20  # bytes of each JSON Lines file whose lines are checked
PARQUET_EXACT = 64 << 20  # Parquet files up to this size are read to count their tokens exactly
FIELD = "data.source"


def input_problems(spec, base_dir: Path, where: Callable[[str], str] | None = None) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) about the data files of `spec` (a `Spec`), relative to `base_dir` (the spec's folder).

    `where` maps a dotted spec path to its location (`LoadedSpec.where`: `file:line:col`); without it
    problems carry no location beyond the dotted path.
    """
    errors: list[Problem] = []
    warnings: list[Problem] = []

    def add(out: list[Problem], path: str, message: str) -> None:
        out.append(Problem(where(path) if where else "", path, message))

    source = spec.data.source
    if source.kind == "pystdlib" and source.documents == "file":
        from hepc.data.identity import pystdlib_listing

        _check_share(spec, pystdlib_listing(source.model_dump()), add, warnings)
    if source.kind not in ("text", "tokens"):
        return errors, warnings
    cfg = source.model_dump()
    base_dir = Path(base_dir)
    keys = ["paths"] + (["val_paths"] if cfg.get("val_paths") is not None else [])
    listed: list[DataFile] = []
    for key in keys:
        for i, pattern in enumerate(cfg.get(key) or []):
            try:
                files = list_pattern(pattern, cfg, base_dir, f"{FIELD}.{key}[{i}]")
            except DataError as e:
                add(errors, e.field, e.message)
                continue
            if key == "paths":
                listed += files
    if source.kind != "text":
        return errors, warnings

    excludes = cfg.get("exclude") or []
    files, unmatched = choose_files(listed, excludes, base_dir)
    absolute_paths = any(os.path.isabs(str(p)) for p in cfg.get("paths") or [])
    for j in unmatched:
        hint = ""
        if absolute_paths and not os.path.isabs(excludes[j]):
            hint = ("; `exclude` patterns are relative to the spec's folder even when `paths` are absolute: "
                    "write it as an absolute pattern")
        add(warnings, f"{FIELD}.exclude[{j}]", f"'{excludes[j]}' matches nothing (looked in {base_dir}){hint}")
    if listed and not files:
        add(errors, f"{FIELD}.exclude", "removes every file that `paths` lists (nothing is left to read)")
    files = with_compression(files)
    _same_names(files, add, warnings)

    try:
        codecs.getincrementaldecoder(source.encoding)
        b"".decode(source.encoding)
    except LookupError as e:
        add(errors, f"{FIELD}.encoding", f"unknown encoding {source.encoding!r}: {e}")
        return errors, warnings

    rule = documents_rule(cfg)
    if isinstance(rule, dict) and "parquet" in rule:
        _check_parquet(spec, files, rule["parquet"], add, errors, warnings)
        return errors, warnings
    jsonl = rule["jsonl"] if isinstance(rule, dict) and "jsonl" in rule else None
    splitter = _splitter(cfg, rule)
    unsplit: list[DataFile] = []  # files of some size where the separator rule matches nothing in the head
    split_checked = 0
    sizes: list[int] = []
    binary: list[tuple[DataFile, str, bool]] = []  # (file, why, has a NUL byte): reported together below
    named: list[tuple[str, int]] = []
    for file in files:
        try:
            with open_data(file.path) as f:
                head = f.read(HEAD)
                # a compressed file's size is that of its decompressed bytes (cached by its stat signature)
                size = _size(f, len(head)) if f.compression is None else content_digest(file.path)[2]
                if jsonl is not None and head and size > len(head):
                    head += f.read(JSONL_HEAD - len(head))
        except OSError as e:
            add(errors, file.where, f"cannot read '{file.name}' ({file.path}): {e.strerror or e}")
            continue
        if not head:
            add(warnings, file.where, f"'{file.name}' is empty")
            continue
        reason = _binary(head[:HEAD], source.encoding, final=size <= HEAD)
        if reason:
            binary.append((file, reason, b"\x00" in head[:HEAD]))
            continue
        if jsonl is not None:
            problem = _jsonl_problem(head, source.encoding, jsonl, whole=size <= len(head))
            if problem:
                add(errors, file.where, f"'{file.name}' {problem}")
                continue
        if splitter is not None and len(head) >= UNSPLIT_MIN:
            split_checked += 1
            if not _splits(head[:HEAD], source.encoding, splitter):
                unsplit.append(file)
        sizes.append(size)
        named.append((file.document_name, size))
    flush_cache()
    _binary_errors(binary, source.encoding, add, errors)
    if unsplit:
        _unsplit_warning(rule, unsplit, split_checked, add, warnings)
    if files and not sizes and not errors:
        add(errors, f"{FIELD}.paths", f"every file is empty ({len(files)} listed): there are no documents")
    if sizes and not errors:
        if spec.data.tokenizer == "bytes" and sum(sizes) <= EXACT_ROOM_BYTES and not (rule == "file" and _utf8(source)):
            try:
                _check_room_exact(spec, _document_lengths(cfg, base_dir), add, errors)  # read: the run's own count
            except DataError as e:  # found while reading every document: the build would stop on it too
                add(errors, e.field, e.message)
        else:
            _check_room(spec, source, sizes, add, errors)
        if rule == "file":
            _check_share(spec, named, add, warnings)
    return errors, warnings


def _splitter(cfg: dict, rule):
    """The compiled separator of a `separator` or `regex` rule (None otherwise, or when the rule itself
    is wrong: that is reported where the rule is checked)."""
    if not (isinstance(rule, dict) and ("separator" in rule or "regex" in rule)):
        return None
    from hepc.data.sources import document_splitter

    try:
        return document_splitter(cfg)
    except DataError:
        return None


def _splits(head: bytes, encoding: str, splitter) -> bool:
    """Whether the rule matches anywhere in a file's head (decoded; a cut character at its end ignored)."""
    from hepc.data.sources import REGEX_TIMEOUT_S

    text = codecs.getincrementaldecoder(encoding)(errors="ignore").decode(head, final=False)
    try:
        return splitter.search(text, timeout=REGEX_TIMEOUT_S) is not None
    except TimeoutError:
        return True  # a pattern that backtracks without end is reported when the corpus is read


def _unsplit_warning(rule: dict, unsplit: list[DataFile], checked: int, add, warnings: list[Problem]) -> None:
    """The rule splits nothing in some files it was asked to split: each of those would be one document."""
    key = "separator" if "separator" in rule else "regex"
    shown = ", ".join(f"'{f.name}'" for f in unsplit[:3]) + (f" and {len(unsplit) - 3:,} more" if len(unsplit) > 3 else "")
    head = f"the first {HEAD >> 10} KiB"
    if len(unsplit) == checked:
        what = f"matches nothing in {head} of any of the {checked:,} files ({shown})"
    else:
        what = f"matches nothing in {head} of {len(unsplit):,} of {checked:,} files ({shown})"
    advice = ("a separator is the whole text of a line, without its line end: a line holding only % is "
              "`separator: '%'`" if key == "separator" else
              "the pattern is searched in the decoded text; `^` and `$` match at line ends only with (?m)")
    add(warnings, f"{FIELD}.documents.{key}",
        f"{{{key}: {rule[key]!r}}} {what}: each of those files would be one document; {advice}")


def _binary_errors(binary: list[tuple[DataFile, str, bool]], encoding: str, add, errors: list[Problem]) -> None:
    """One error per binary file; files that share a folder and a suffix (a package's `.dat` indexes
    beside its texts) are one error with the `exclude` pattern that leaves them all out."""
    groups: dict[tuple[str, str, str], list[tuple[DataFile, str, bool]]] = {}
    for entry in binary:
        name = entry[0].name
        folder, _, base = name.rpartition("/")
        suffix = base[base.rfind("."):] if "." in base.lstrip(".") else ""
        groups.setdefault((entry[0].where, folder, suffix or name), []).append(entry)
    for (where, folder, suffix), group in groups.items():
        file, reason, has_nul = group[0]
        once = f" once decompressed ({file.compression})" if file.compression else ""
        if len(group) > 1:
            pattern = f"{folder + '/' if folder else ''}*{suffix}"
            add(errors, where, f"{len(group):,} files look binary{once}, not {encoding} text, such as '{file.name}' ({reason}); "
                f"leave them out with `exclude: ['{pattern}']`")
            continue
        if file.document_name.endswith(".parquet"):
            hint = " (a Parquet file? set `documents: {parquet: COLUMN}`)"
        elif not has_nul:  # no NUL byte: maybe text in another encoding
            hint = " (text in another encoding? set `data.source.encoding`; not text? leave it out with `exclude`)"
        else:
            hint = " (leave it out with `exclude`)"
        add(errors, where, f"'{file.name}' looks binary{once}, not {encoding} text: {reason}{hint}")


def _same_names(files: list[DataFile], add, warnings: list[Problem]) -> None:
    """A warning when a compressed file takes the name of another file (`a.jsonl.gz` beside `a.jsonl`):
    their documents would share names (a copy of the same text is read once all the same)."""
    by_name: dict[str, list[DataFile]] = {}
    for f in files:
        by_name.setdefault(f.document_name, []).append(f)
    for name, group in by_name.items():
        if len(group) > 1 and any(f.compression for f in group):
            compressed = next(f for f in group if f.compression)
            others = ", ".join(f"'{f.name}'" for f in group if f is not compressed)
            add(warnings, compressed.where,
                f"'{compressed.name}' is read as '{name}' (decompressed), as {others} is: their documents share names; "
                f"leave one out with `exclude` (e.g. `exclude: ['{compressed.name}']`)")


def _check_share(spec, named: list[tuple[str, int]], add, warnings: list[Problem]) -> None:
    """A warning when the largest document (a whole file: its size in bytes bounds its tokens) could be
    more than SHARE_WARNING of the smallest split: a document stays whole in one split."""
    from hepc.data.carve import SHARE_WARNING

    d = spec.data
    splits = {"val": d.val_tokens, "test": d.test_tokens, "heldout": d.heldout_tokens, "train": d.train_tokens - d.heldout_tokens}
    split, tokens = min(((n, t) for n, t in splits.items() if t > 0), key=lambda item: item[1])
    if not named:
        return
    name, size = max(named, key=lambda item: (item[1], item[0]))
    if size + 1 > SHARE_WARNING * tokens:
        add(warnings, f"{FIELD}.documents",
            f"the largest document, '{name}' ({size + 1:,} tokens at most), is more than {SHARE_WARNING:.0%} of the "
            f"smallest split ({split}, {tokens:,} tokens): a document stays whole in one split, so a few may fill it; "
            "`hepc data` shows each split's largest share; a `documents` rule that makes smaller documents, or larger "
            "splits, spread them")


def _jsonl_problem(head: bytes, encoding: str, key: str, whole: bool) -> str | None:
    """'line N: what is wrong' for the first bad line among those that start in `head` (None when all are good)."""
    from hepc.data.records import record_text

    try:
        text = codecs.getincrementaldecoder(encoding)().decode(head, final=whole)
    except UnicodeError:
        return None  # past the binary check's head: the build reports it, located at `encoding`
    lines = text.split("\n")
    if not whole:
        lines = lines[:-1] or lines  # the last line may go on past the head: checked only when it is all here
    for n, line in enumerate(lines, 1):
        try:
            record_text(line, key)
        except ValueError as e:
            return f"line {n:,}: {e}"
    return None


def _check_parquet(spec, files: list[DataFile], column: str, add, errors: list[Problem], warnings: list[Problem]) -> None:
    """Footer, column and null counts of each Parquet file (see the module docstring); then the room, when exact."""
    from hepc.data.records import check_not_compressed, parquet_file

    exact: list[int] | None = []
    rows_total = 0
    for file in files:
        try:
            with open_regular(file.path) as f:
                size = _size(f, 0)
                check_not_compressed(file, f)
                pf = parquet_file(file, f, column)
                problem = _parquet_nulls(pf, column)
                if problem:
                    add(errors, file.where, f"'{file.name}' {problem}")
                    continue
                rows = pf.metadata.num_rows
                rows_total += rows
                if not rows:
                    add(warnings, file.where, f"'{file.name}' has no rows")
                elif exact is not None and size <= PARQUET_EXACT:
                    exact.extend(_parquet_lengths(pf, column))
                else:
                    exact = None
        except DataError as e:
            add(errors, e.field, e.message)
        except OSError as e:
            add(errors, file.where, f"cannot read '{file.name}' ({file.path}): {e.strerror or e}")
    if files and not rows_total and not errors:
        add(errors, f"{FIELD}.paths", f"no file has any rows ({len(files)} listed): there are no documents")
    if exact and not errors:
        _check_room_exact(spec, exact, add, errors)


def _parquet_nulls(pf, column: str) -> str | None:
    """'row group G: column C has N nulls' from the footer's statistics (None when none are counted)."""
    for group in range(pf.metadata.num_row_groups):
        meta = pf.metadata.row_group(group)
        for j in range(meta.num_columns):
            chunk = meta.column(j)
            if chunk.path_in_schema != column:
                continue
            stats = chunk.statistics
            if stats is not None and stats.has_null_count and stats.null_count:
                nulls = f"{stats.null_count:,} null value" + ("s" if stats.null_count != 1 else "")
                return f"row group {group}: column '{column}' has {nulls} (every row needs a string)"
    return None


def _parquet_lengths(pf, column: str) -> list[int]:
    """The UTF-8 length of each non-empty text of `column`, a row group at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths: list[int] = []
    for group in range(pf.num_row_groups):
        values = pf.read_row_group(group, columns=[column]).column(0)
        if pa.types.is_dictionary(values.type):
            values = values.combine_chunks().dictionary_decode()
        n = pc.binary_length(values).to_numpy(zero_copy_only=False)
        lengths.extend(int(x) for x in n[n > 0])
    return lengths


def _utf8(source) -> bool:
    return source.encoding.replace("_", "-").lower() in ("utf-8", "utf8")


def _document_lengths(cfg: dict, base_dir: Path) -> list[int]:
    """UTF-8 lengths of the source's documents as the corpus reads them (its `documents` rule and
    encoding), each distinct document once (exact duplicates are dropped before carving)."""
    import xxhash

    from hepc.data.sources import iter_named_documents

    seen: set[int] = set()
    lengths = []
    for _, chunks in iter_named_documents(cfg, base_dir):
        digest, n = xxhash.xxh3_64(), 0
        for chunk in chunks:
            digest.update(chunk)
            n += len(chunk)
        if n and digest.intdigest() not in seen:
            seen.add(digest.intdigest())
            lengths.append(n)
    return lengths


def _check_room_exact(spec, lengths: list[int], add, errors: list[Problem]) -> None:
    """An error when documents of these UTF-8 lengths cannot hold val + train tokens (bytes tokenizer, exact)."""
    d = spec.data
    if d.tokenizer != "bytes":
        return
    needed = d.val_tokens + d.test_tokens + d.train_tokens
    width = None if d.max_doc_tokens is None else d.max_doc_tokens - 1
    tokens = sum(n + (1 if width is None else max(1, -(-n // width))) for n in lengths)
    if tokens < needed:
        add(
            errors,
            "data.train_tokens",
            f"{'the document holds' if len(lengths) == 1 else f'the {len(lengths):,} documents hold'} {tokens:,} tokens "
            "(bytes and end-of-texts); the splits need "
            f"{needed:,} (val {d.val_tokens:,} + test {d.test_tokens:,} + train {d.train_tokens:,}, heldout included in train)",
        )


def loaded_input_problems(loaded) -> tuple[list[Problem], list[Problem]]:
    """`input_problems` of every population of a loaded spec (each distinct source once), located in its file."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    seen = set()
    for spec in [v.spec for v in loaded.variants] or [loaded.spec]:
        key = repr(spec.data.source), spec.data.train_tokens, spec.data.val_tokens, spec.data.max_doc_tokens
        if key in seen:
            continue
        seen.add(key)
        errs, warns = input_problems(spec, loaded.base_dir, loaded.where)
        errors.extend(p for p in errs if p not in errors)
        warnings.extend(p for p in warns if p not in warnings)
    return errors, warnings


def _size(f, already: int) -> int:
    """The file's size (at least the `already` bytes read), the read position left where it was."""
    try:
        here = f.tell()
        size = int(f.seek(0, 2))
        f.seek(here)
        return max(size, already)
    except OSError:
        return already


def _binary(head: bytes, encoding: str, final: bool) -> str | None:
    """Why the first bytes of a file are not text in `encoding` (None when they are)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        text = decoder.decode(head, final=final)  # not final: the head may end inside a character
    except UnicodeDecodeError as e:
        return f"cannot decode byte {e.start:,}: {e.reason}"
    except UnicodeError as e:
        return str(e)
    nul = text.find("\x00")
    if nul >= 0:
        return f"NUL character at character {nul:,}"
    return None


def _check_room(spec, source, sizes: list[int], add, errors: list[Problem]) -> None:
    """An error when the files cannot hold val + train tokens (see the module docstring)."""
    d = spec.data
    if d.tokenizer != "bytes":
        return
    needed = d.val_tokens + d.test_tokens + d.train_tokens
    utf8 = _utf8(source)
    cap = d.max_doc_tokens
    if source.documents == "file" and utf8:
        width = None if cap is None else cap - 1
        tokens = sum(size + (1 if width is None else max(1, -(-size // width))) for size in sizes)
        held = f"hold {tokens:,} tokens"
    else:
        tokens = sum(2 * 4 * size for size in sizes)
        held = f"hold at most {tokens:,} tokens"
    if tokens < needed:
        add(
            errors,
            "data.train_tokens",
            f"{'the data file ' + held.replace('hold', 'holds', 1) if len(sizes) == 1 else f'the {len(sizes):,} data files {held}'} (bytes and end-of-texts); the splits need {needed:,} "
            f"(val {d.val_tokens:,} + test {d.test_tokens:,} + train {d.train_tokens:,}, heldout included in train)",
        )
