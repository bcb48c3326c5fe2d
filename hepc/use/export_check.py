"""An exported ensemble folder is closed and verifies itself before anything is built from it.

    DIR/SHA256SUMS     one line per file, `<sha256>  <name>` (the format `sha256sum -c SHA256SUMS` checks),
                       covering every other file: the manifest, the card, the tokenizer and each member

Loading (`check_export`) reads SHA256SUMS (bounded, a regular file), then requires that
- every name it lists is a plain relative path inside the folder, reached through real folders
  (no link, no `..`, no absolute path), and is a regular file (a FIFO or a device is refused
  without being opened for a blocking read);
- the manifest and the card are listed, and every file the manifest names (each member, the
  tokenizer) is listed with the same digest the manifest records;
- the manifest's bytes, the card's and the tokenizer's match their sha256 (read once, bounded),
  and the manifest is well formed (`ExportManifest`: every malformed field is one line, exit 2);
- each member file has the size the manifest records. A member's own sha256 is checked on the
  bytes it is loaded from, before its model is built (`hepc.use.source.load_member`), and its
  tensor shapes are compared with the model config before any memory is allocated for it.

What this does not cover: a deliberate forgery that rewrites a file *and* its lines in SHA256SUMS
(and the manifest) consistently. Checksums find damage and accidents; authenticity needs a
signature over SHA256SUMS, which hepc does not make (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hepc.errors import HepcError
from hepc.store.safe_io import file_kind, open_regular

EXPORT_FORMAT = 2  # 2: SHA256SUMS covers every file; 1 (no checksum list) is refused: export again
SUMS = "SHA256SUMS"
MANIFEST = "hepc-ensemble.json"
CARD = "README.md"
SUMS_LIMIT = 1 << 20  # a checksum list of a few thousand members
SMALL_LIMIT = 256 << 20  # the manifest, the card, a tokenizer file
_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")

Pos = Annotated[int, Field(strict=True, ge=1)]
NonNeg = Annotated[int, Field(strict=True, ge=0)]
Sha = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Num = Annotated[float, Field(allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ModelShape(_Model):
    """The bounds a spec allows (hepc/spec/models.py): the RoPE tables (seq_len × head size) are the
    one allocation the snapshot's own size does not bound."""

    vocab_size: Annotated[int, Field(strict=True, ge=2, le=1 << 24)]
    n_layer: Annotated[int, Field(strict=True, ge=1, le=256)]
    d_model: Annotated[int, Field(strict=True, ge=8, le=65536)]
    n_head: Annotated[int, Field(strict=True, ge=1, le=1024)]
    seq_len: Annotated[int, Field(strict=True, ge=8, le=65536)]

    @model_validator(mode="after")
    def _heads(self):
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError("d_model must split into n_head heads of an even size")
        return self


class MemberRow(_Model):
    key: Annotated[str, Field(pattern=r"^[0-9a-f]{12,64}$")]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    trajectory: NonNeg
    cycle: NonNeg
    weight: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    prior_weight: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    val_loss: Num | None = None
    file: str
    sha256: Sha
    bytes: NonNeg


class TokenizerRecord(_Model):
    kind: Annotated[str, Field(min_length=1)]
    file: str
    eot_id: NonNeg | None = None
    config: dict | None = None


class ExportManifest(_Model):
    format: Literal["hepc-ensemble"]
    version: Pos
    k: Pos
    aggregate: Literal["probability", "logit"]
    model: ModelShape
    tokenizer: TokenizerRecord
    max_doc_tokens: Pos | None = None
    source: dict | None = None
    members: Annotated[list[MemberRow], Field(min_length=1)]
    files: dict[str, Sha]
    provenance: dict
    figures: dict = {}


def sums_text(digests: dict[str, str]) -> str:
    """SHA256SUMS for {name: sha256}, sorted by name."""
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def _plain(name: str) -> bool:
    p = PurePosixPath(name)
    return (
        bool(name) and "\\" not in name and "\x00" not in name and not p.is_absolute()
        and all(part not in ("", ".", "..") for part in name.split("/"))
    )


def _regular_inside(folder: Path, name: str) -> tuple[Path, int]:
    """(path, size) of `name` under `folder`, reached through real folders only; HepcError if it is
    a link, not a regular file, or missing."""
    path = folder
    parts = name.split("/")
    for i, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise HepcError(f"{path}: missing (SHA256SUMS lists it)") from None
        except OSError as e:
            raise HepcError(f"{path}: cannot be read ({e.strerror})") from None
        last = i == len(parts) - 1
        if stat.S_ISLNK(mode):
            raise HepcError(f"{path}: a symbolic link; an exported ensemble holds plain files only")
        if not last and not stat.S_ISDIR(mode):
            raise HepcError(f"{path}: not a folder")
        if last and not stat.S_ISREG(mode):
            raise HepcError(f"{path}: is {file_kind(mode)}, not a regular file")
    return path, os.lstat(path).st_size


def read_listed(folder: Path, name: str, digest: str, limit: int = SMALL_LIMIT) -> bytes:
    """The bytes of a listed file, read once (at most `limit`) and checked against its sha256."""
    path, size = _regular_inside(folder, name)
    if size > limit:
        raise HepcError(f"{path}: {size} bytes, more than a {name} can hold ({limit}); not read")
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if hashlib.sha256(data).hexdigest() != digest:
        raise HepcError(f"{path}: sha256 does not match SHA256SUMS (altered); export the ensemble again")
    return data


def read_sums(folder: Path) -> dict[str, str]:
    """{name: sha256} of the folder's SHA256SUMS; HepcError (one line) for anything malformed."""
    path = folder / SUMS
    if not os.path.lexists(path):
        raise HepcError(f"{folder}: no {SUMS} (an export of an older hepc, or not an export); export the ensemble again")
    path, size = _regular_inside(folder, SUMS)
    if size > SUMS_LIMIT:
        raise HepcError(f"{path}: {size} bytes, too large for a checksum list")
    with open_regular(path) as f:
        raw = f.read(SUMS_LIMIT + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HepcError(f"{path}: not UTF-8 text") from None
    sums: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = _LINE.fullmatch(line)
        if m is None:
            raise HepcError(f"{path}:{n}: not a '<sha256>  <name>' line")
        digest, name = m.groups()
        if not _plain(name) or name == SUMS:
            raise HepcError(f"{path}:{n}: {name!r} is not a plain file name inside the folder")
        if name in sums:
            raise HepcError(f"{path}:{n}: {name!r} is listed twice")
        sums[name] = digest
    for needed in (MANIFEST, CARD):
        if needed not in sums:
            raise HepcError(f"{path}: does not list {needed}; export the ensemble again")
    return sums


def _one_line(e: ValidationError, where: Path) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{where}: {loc}: {err['msg']}{more}"


def check_export(folder: Path) -> tuple[ExportManifest, dict, dict[str, str]]:
    """(validated manifest, its raw dict, SHA256SUMS) of an export folder, after every check above
    but the members' own digests (checked as they are loaded). HepcError names the first problem."""
    import json

    if folder.is_symlink() or not folder.is_dir():
        raise HepcError(f"{folder}: not an exported ensemble folder")
    sums = read_sums(folder)
    raw = read_listed(folder, MANIFEST, sums[MANIFEST])
    read_listed(folder, CARD, sums[CARD])
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise HepcError(f"{folder / MANIFEST}: not JSON ({e})") from None
    version = data.get("version") if isinstance(data, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > EXPORT_FORMAT:
        raise HepcError(f"{folder}: exported by a newer hepc (format {version}); upgrade hepc")
    if isinstance(version, int) and version < EXPORT_FORMAT:
        raise HepcError(f"{folder}: an export of an older hepc (format {version}); export the ensemble again")
    try:
        manifest = ExportManifest.model_validate(data)
    except ValidationError as e:
        raise HepcError(_one_line(e, folder / MANIFEST)) from None
    if manifest.k != len(manifest.members):
        raise HepcError(f"{folder / MANIFEST}: k is {manifest.k} but {len(manifest.members)} members are listed")
    named = {r.file: r.sha256 for r in manifest.members}
    named[manifest.tokenizer.file] = manifest.files.get(manifest.tokenizer.file, "")
    for name, digest in named.items():
        if not _plain(name):
            raise HepcError(f"{folder / MANIFEST}: names {name!r}, not a plain file name inside the folder")
        if sums.get(name) != digest or manifest.files.get(name) != digest:
            raise HepcError(f"{folder}: {name} is not covered by SHA256SUMS with the digest the manifest records; "
                            "export the ensemble again")
    read_listed(folder, manifest.tokenizer.file, sums[manifest.tokenizer.file])
    for row in manifest.members:
        path, size = _regular_inside(folder, row.file)
        if size != row.bytes:
            raise HepcError(f"{path}: {size} bytes, the manifest records {row.bytes} (truncated or altered)")
    return manifest, data, sums
