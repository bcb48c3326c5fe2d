"""The spec's `data` section as strict, frozen pydantic models: the sources (text, JSON Lines, Parquet,
stdlib, synthetic, pre-tokenized), their document rules and the tokenizer; plus the `Strict` base and the
name patterns every section of the spec uses (hepc.spec.models)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# Sweeps may vary anything that defines a population, not the experiment's identity or runtime.
SWEEP_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
SWEEP_FORBIDDEN_ROOTS = ("version", "name", "runtime", "sweep")


class Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False
    )


# --------------------------------------------------------------------------- data


# A field added after keys were first stored: left out of the step key while it equals its default
# (hepc.hashing.key_fields), so every earlier key and result stays valid. Shown in `hepc schema`.
KEY_OMITS_DEFAULT = {"key_omits_default": True}


def _one_line(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(
            f"must be the separator line's text without its line end (got {value!r}; e.g. '%' for a line holding only %)"
        )
    return value


class SeparatorDocuments(Strict):
    """A line equal to `separator` (its line ending aside) ends a document; it is part of no document."""

    separator: Annotated[str, Field(min_length=1), AfterValidator(_one_line)]
    """The separator line's text, e.g. `%` (fortune files); one line."""


class RegexDocuments(Strict):
    """Documents are separated by the matches of a regular expression (Python `re`) over the decoded text."""

    regex: Annotated[str, Field(min_length=1)]
    """The separator pattern, e.g. `\\n\\s*\\n` for blank lines; it must not match the empty string. The
    text is searched a chunk at a time with 64 Ki characters held back, so a separator longer than that
    may be missed."""


def _documents_tag(value, keys: tuple[str, ...]) -> str | None:
    """Which rule a `documents` value is: 'str' for a name, else the one rule key of a mapping (None: none
    or several, one error for the field instead of one per kind of rule)."""
    if isinstance(value, str):
        return "str"
    if isinstance(value, BaseModel):  # serialising a validated spec: the rule's model names its tag
        value = type(value).model_fields
    if isinstance(value, dict):
        present = [k for k in keys if k in value]
        return present[0] if len(present) == 1 else None
    return None


class PyStdlibSource(Strict):
    """The installed Python standard library's `.py` files: one document per file, or several per file
    with a `documents` rule."""

    kind: Literal["pystdlib"]
    include_tests: bool = False
    """Also use the standard library's own test suites (excluded by default)."""
    exclude: list[Annotated[str, Field(min_length=1)]] = []
    """Library-relative paths or glob patterns (`fnmatch`, `*` also crosses `/`) of files left out, e.g.
    `encodings/*` (code-page tables); the listing after them is part of the corpus key."""
    documents: Annotated[
        Annotated[Literal["file"], Tag("str")] | Annotated[SeparatorDocuments, Tag("separator")] | Annotated[RegexDocuments, Tag("regex")],
        Discriminator(
            lambda v: _documents_tag(v, ("separator", "regex")),
            custom_error_type="documents_rule",
            custom_error_message="must be 'file', {separator: LINE} or {regex: PATTERN}",
        ),
    ] = "file"
    """How files become documents, as for `text` sources: `file`, `{separator: LINE}` or `{regex:
    PATTERN}`; specs/repro splits before every top-level definition and method, so that its splits
    hold many small documents. A rule other than `file` is part of the corpus key."""


class JsonlDocuments(Strict):
    """JSON Lines: every line of a file is a JSON object, one document, its text in field `jsonl`."""

    jsonl: Annotated[str, Field(min_length=1)]
    """The record's field that holds the document's text (a string), e.g. `text` or `content`."""


class ParquetDocuments(Strict):
    """Parquet: every row of a file is one document, its text in column `parquet` (read with pyarrow,
    a row group at a time)."""

    parquet: Annotated[str, Field(min_length=1)]
    """The string column that holds the documents' text, e.g. `text` (FineWeb)."""


class TextSource(Strict):
    """Local text files: one document per file, several per file with a `documents` rule, or one per
    record of JSON Lines / row of Parquet files."""

    kind: Literal["text"]
    paths: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    """Files or glob patterns, relative to the spec file's folder unless absolute. Only regular files
    are data; a glob must match at least one, and a literal path must be one."""
    exclude: list[Annotated[str, Field(min_length=1)]] = []
    """Files or glob patterns (relative like `paths`) removed from what `paths` lists; a matched folder
    removes everything under it. Removing every file is an error."""
    encoding: str = "utf-8"
    """Python codec of the files (e.g. utf-8, latin-1, utf-16). Nothing is replaced: a byte sequence that
    cannot be decoded in it is an error naming the file and its byte offset. Documents are re-encoded
    as UTF-8."""
    documents: Annotated[
        Annotated[Literal["file", "jsonl", "parquet"], Tag("str")] | Annotated[SeparatorDocuments, Tag("separator")] | Annotated[RegexDocuments, Tag("regex")] | Annotated[JsonlDocuments, Tag("jsonl")] | Annotated[ParquetDocuments, Tag("parquet")],
        Discriminator(
            lambda v: _documents_tag(v, ("separator", "regex", "jsonl", "parquet")),
            custom_error_type="documents_rule",
            custom_error_message="must be 'file', 'jsonl', 'parquet', {separator: LINE}, {regex: PATTERN}, "
            "{jsonl: FIELD} or {parquet: COLUMN}",
        ),
    ] = "file"
    """How files become documents: `file` = one document per file; `{separator: LINE}`: a line equal
    to LINE ends a document; `{regex: PATTERN}`: matches of PATTERN separate documents; `{jsonl: FIELD}`
    (`jsonl` = `{jsonl: text}`): each line of a JSON Lines file is a record, its string FIELD a
    document; `{parquet: COLUMN}` (`parquet` = `{parquet: text}`): each row of a Parquet file, its
    string COLUMN a document (`encoding` does not apply: Parquet strings are UTF-8). Empty documents
    (no characters at all) are skipped. A rule other than `file` is part of the corpus key."""


class SyntheticSource(Strict):
    """A seeded order-k Markov chain over printable characters with an exactly known entropy rate."""

    kind: Literal["synthetic"]
    alphabet_size: Annotated[int, Field(ge=2, le=95)] = 32
    """Number of distinct symbols (printable ASCII characters)."""
    order: Annotated[int, Field(ge=1, le=4)] = 2
    """Markov order: how many previous symbols determine the next one."""
    concentration: Annotated[float, Field(gt=0)] = 0.1
    """Dirichlet concentration of each transition row (smaller = lower entropy)."""
    doc_tokens: Annotated[int, Field(ge=16)] = 1000
    """Length of each generated document in symbols."""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    """Seed of the generator (the chain and the documents)."""


class TokensSource(Strict):
    """Pre-tokenized shards (tokenizer `none`): `.npy` arrays, nanoGPT `.bin` (raw uint16) or `.pt` tensors.

    Documents are split at `eot_id`. When `val_paths` is given, val comes from those files (as in
    Slowrun: first 10M FineWeb tokens); otherwise it is carved from the shuffled documents.
    """

    kind: Literal["tokens"]
    paths: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    """Training shards (files or globs, relative to the spec file's folder unless absolute)."""
    val_paths: list[Annotated[str, Field(min_length=1)]] | None = None
    """Validation shards; absent = carve val out of the documents like the other sources."""
    vocab_size: Annotated[int, Field(ge=2, le=1 << 24)]
    """Vocabulary size of the token ids (GPT-2: 50257)."""
    eot_id: Annotated[int, Field(ge=0)]
    """End-of-text id that starts every document (GPT-2: 50256)."""
    bytes_per_token: Annotated[float, Field(gt=0)] | None = None
    """Average UTF-8 bytes per token, for bits per byte (unknown → bpb reported per token)."""


Source = Annotated[
    PyStdlibSource | TextSource | SyntheticSource | TokensSource, Field(discriminator="kind")
]


class BpeTokenizer(Strict):
    """A byte-level BPE (the `tokenizers` library, GPT-2 pre-tokenization) trained on the text of the
    train split only, never on val or held-out; end-of-text is id 0 and every byte has an id, so any
    text can be encoded. Losses are nats/token; bits/byte use each split's measured bytes per token."""

    kind: Literal["bpe"]
    vocab_size: Annotated[int, Field(ge=257, le=262144)]
    """Size of the id space, end-of-text and the 256 bytes included (so at least 257); also the model's
    vocabulary. If the train text offers fewer merges (see min_frequency), the last ids stay unused."""
    min_frequency: Annotated[int, Field(ge=1, le=1000000)] = 2
    """A pair of tokens is merged only if it occurs at least this often in the train text."""



def _tokenizer_tag(value) -> str | None:
    """Which form of `data.tokenizer` a value is: a name (`str`), a BPE mapping (`bpe`), or neither (None)."""
    if isinstance(value, BpeTokenizer) or (isinstance(value, dict) and value.get("kind") == "bpe"):
        return "bpe"
    return None if isinstance(value, dict) else "str"


class Data(Strict):
    """The fixed corpus: where it comes from, how it is tokenized and split."""

    source: Source
    """Where the documents come from (`kind`: pystdlib, text, synthetic or tokens)."""
    tokenizer: Annotated[
        Annotated[Literal["bytes", "none"], Tag("str")] | Annotated[BpeTokenizer, Tag("bpe")],
        Discriminator(
            _tokenizer_tag,
            custom_error_type="tokenizer_kind",
            custom_error_message="must be 'bytes', 'none' or a mapping with kind: bpe",
        ),
    ] = "bytes"
    """`bytes`: UTF-8 bytes plus an end-of-text token prefixed to every document (vocab 257);
    `none`: the source is already tokenized (`kind: tokens`); `{kind: bpe, vocab_size: N}`: a
    byte-level BPE trained on the train split only (a cached `tokenizer` step the corpus depends on)."""
    train_tokens: Annotated[int, Field(gt=0)]
    """Tokens of the training budget, the held-out slice included (it is carved out of them)."""
    val_tokens: Annotated[int, Field(gt=0)]
    """Tokens of the validation split (whole documents, never trained on)."""
    heldout_tokens: Annotated[int, Field(gt=0)]
    """Tokens carved out of train (whole documents) to fit the learned prior; never trained on (unless
    `train_on_heldout`)."""
    test_tokens: Annotated[int, Field(ge=0)] = 0
    """Tokens of the test split (whole documents, carved right after val): nothing is fit, selected,
    stopped early or tuned on it; `hepc results / compare / report --split test` show it. 0 = none."""
    train_on_heldout: bool = False
    """Train on the held-out slice too (all of train_tokens): for a population whose prior needs no
    held-out data (`prior.kind: uniform`), so that a baseline trains on exactly the data a q0 population
    consumes (train for its members, held-out for its prior) while val and test stay the same."""
    seq_len: Annotated[int, Field(ge=8, le=65536)]
    """Context length in tokens."""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    """Seed of the document shuffle that decides the splits."""
    max_doc_tokens: Annotated[int, Field(ge=2)] | None = 512
    """Longest training sequence a document gives, in tokens, its end-of-text included: a longer
    document is cut into pieces of at most this many tokens (each starting with an end-of-text). The
    pieces of a document stay in its split (docs/data-splits.md). null: no cap. The synthetic
    source's documents are never cut (choose its doc_tokens)."""
