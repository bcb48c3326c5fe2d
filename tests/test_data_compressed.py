"""Compressed corpora (issue 23): text and JSON Lines files in gzip, xz, bz2 or zstd are read decompressed,
streamed, chosen by their magic bytes; a compressed file has the identity of its decompressed bytes (the
same corpus key and splits as the file itself); damage is one located line (exit 2); the decompressed
digest is cached by the file's stat signature; `hepc data` shows compressed and decompressed bytes."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zstandard
from data_helpers import spec_file
from typer.testing import CliRunner

from hepc.cli.main import app
from hepc.compile.compiler import compile_spec
from hepc.data import DataError, build_corpus
from hepc.data import compressed as comp
from hepc.data.identity import DataFile, list_data_files, source_identity
from hepc.data.records import jsonl_records
from hepc.data.sources import iter_named_documents
from hepc.spec.load import load_spec

BYTES = {"kind": "bytes"}
SIZES = {"train_tokens": 30_000, "val_tokens": 4_000, "heldout_tokens": 3_000}


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch) -> Path:
    """A cache of decompressed digests of this test's own (never the user's ~/.cache)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("HEPC_CACHE_DIR", str(folder))
    monkeypatch.setattr(comp, "_CACHE", comp._DigestCache())
    return folder


def jsonl_bytes(n: int = 600, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "délta", "zeta\n", "ω", "the", "quick"]
    lines = [json.dumps({"id": i, "text": f"<R{i:05d}> " + " ".join(rng.choice(words, int(rng.integers(3, 60)))),
                         "url": f"https://example.org/{i}"}) for i in range(n)]
    lines.insert(4, "")  # a blank line is skipped, compressed or not
    return ("\n".join(lines) + "\n").encode()


def compress(data: bytes, fmt: str) -> bytes:
    """`data` in `fmt`; gzip and zstd as several members / frames (as pigz, bgzip and zstd -T write them)."""
    third = len(data) // 3
    parts = [data[:third], data[third : 2 * third], data[2 * third :]]
    if fmt == "gzip":
        return b"".join(gzip.compress(p) for p in parts)
    if fmt == "xz":
        return lzma.compress(data)
    if fmt == "bz2":
        return bz2.compress(data)
    if fmt == "zstd":
        return b"".join(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(p) for p in parts)
    if fmt == "zstd-19":
        return zstandard.ZstdCompressor(level=19).compress(data)
    raise AssertionError(fmt)


SUFFIX = {"gzip": ".gz", "xz": ".xz", "bz2": ".bz2", "zstd": ".zst", "zstd-19": ".zst"}
FORMATS = ["gzip", "xz", "bz2", "zstd", "zstd-19"]


def digest_of(data: bytes) -> tuple[str, int]:
    import xxhash

    return xxhash.xxh3_128_hexdigest(data), len(data)


def corpus_key(base: Path, source: str) -> str:
    compiled = compile_spec(load_spec(spec_file(base, source, **SIZES)), strict_data=True)
    return next(s.key for s in compiled.graph if s.kind == "corpus")


def build(base: Path, source: dict, out: str) -> tuple[dict, dict]:
    meta = build_corpus(source, BYTES, base_dir=base, out_dir=base / out, seed=0, **SIZES)
    return meta, {n: np.load(base / out / f"{n}.npy") for n in ("val", "heldout", "train")}


def read_all(source: dict, base: Path) -> list[tuple[str, bytes]]:
    return [(name, b"".join(chunks)) for name, chunks in iter_named_documents(source, base)]


def validate(spec: Path):
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert "Traceback" not in result.output, result.output
    return result


# --------------------------------------------------------------------------- the same corpus


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_compressed_jsonl_file_is_the_same_corpus_as_the_file_itself(tmp_path, fmt):
    data = jsonl_bytes()
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    (tmp_path / "plain" / "a.jsonl").write_bytes(data)
    (tmp_path / "packed" / f"a.jsonl{SUFFIX[fmt]}").write_bytes(compress(data, fmt))
    plain = {"kind": "text", "paths": [str(tmp_path / "plain" / "*")], "documents": "jsonl"}
    packed = {"kind": "text", "paths": [str(tmp_path / "packed" / "*")], "documents": "jsonl"}

    [f] = list_data_files(packed, tmp_path)
    assert f.compression == fmt.split("-")[0] and f.document_name == "a.jsonl"
    assert source_identity(packed, tmp_path) == source_identity(plain, tmp_path)
    assert corpus_key(tmp_path, f"{{kind: text, paths: ['{tmp_path}/packed/*'], documents: jsonl}}") == \
        corpus_key(tmp_path, f"{{kind: text, paths: ['{tmp_path}/plain/*'], documents: jsonl}}")
    meta_plain, splits_plain = build(tmp_path, plain, "p")
    meta_packed, splits_packed = build(tmp_path, packed, "z")
    for name in splits_plain:
        assert np.array_equal(splits_plain[name], splits_packed[name]), name
    assert meta_packed == meta_plain  # names too: `a.jsonl:line 7` either way
    assert any(e["name"].startswith("a.jsonl:line ") for s in meta_packed["splits"].values() for e in s["largest"])


@pytest.mark.parametrize("documents", ["file", "{separator: '%'}"])
def test_compressed_text_files_give_the_same_key_and_splits_for_the_text_rules(tmp_path, documents):
    rng = np.random.default_rng(3)
    texts = {}
    for k in range(4):
        texts[f"t{k}.txt"] = "%\n".join(" ".join(rng.choice(["ab", "cd", "ef\n", "gé"], 400)) + "\n"
                                         for _ in range(12)).encode()
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    for (name, data), fmt in zip(texts.items(), ["gzip", "xz", "bz2", "zstd"]):
        (tmp_path / "plain" / name).write_bytes(data)
        (tmp_path / "packed" / (name + SUFFIX[fmt])).write_bytes(compress(data, fmt))
    plain = {"kind": "text", "paths": [str(tmp_path / "plain" / "*")], "documents": documents}
    packed = {"kind": "text", "paths": [str(tmp_path / "packed" / "*")], "documents": documents}
    if documents != "file":
        plain["documents"] = packed["documents"] = {"separator": "%"}
    assert source_identity(packed, tmp_path) == source_identity(plain, tmp_path)
    assert read_all(packed, tmp_path) == read_all(plain, tmp_path)
    meta_plain, splits_plain = build(tmp_path, plain, "p")
    meta_packed, splits_packed = build(tmp_path, packed, "z")
    assert all(np.array_equal(splits_plain[n], splits_packed[n]) for n in splits_plain)
    assert meta_packed == meta_plain


def test_the_format_is_told_by_the_magic_bytes_not_the_suffix(tmp_path):
    data = jsonl_bytes(200)
    (tmp_path / "really-gzip.jsonl").write_bytes(gzip.compress(data))  # no suffix: still read decompressed
    (tmp_path / "plain.jsonl.gz").write_bytes(data)  # a suffix, but plain text: read as it is, name kept
    files = list_data_files({"kind": "text", "paths": ["*.jsonl*"]}, tmp_path)
    assert [(f.name, f.compression, f.document_name) for f in files] == [
        ("plain.jsonl.gz", None, "plain.jsonl.gz"), ("really-gzip.jsonl", "gzip", "really-gzip.jsonl")]
    identity = source_identity({"kind": "text", "paths": ["*.jsonl*"], "documents": "jsonl"}, tmp_path)
    assert identity["files"][0]["digest"] == identity["files"][1]["digest"]  # the same decompressed bytes
    assert comp.sniff(b"BZh91AY&SY") == "bz2" and comp.sniff(b"BZh is a word") is None
    assert comp.sniff(b"\x50\x2a\x4d\x18\x00\x00\x00\x00") == "zstd"  # a skippable frame first


def test_keys_of_uncompressed_sources_are_unchanged(tmp_path):
    """An uncompressed file's identity entry is still its listed name and the xxh3_128 of its bytes."""
    import xxhash

    (tmp_path / "b.txt").write_bytes(b"hello\n")
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "x"}\n')
    identity = source_identity({"kind": "text", "paths": ["*"]}, tmp_path)
    assert identity == {"kind": "text", "encoding": "utf-8", "files": [
        {"name": "a.jsonl", "digest": xxhash.xxh3_128_hexdigest(b'{"text": "x"}\n')},
        {"name": "b.txt", "digest": xxhash.xxh3_128_hexdigest(b"hello\n")}]}
    assert not (tmp_path / "cache").exists()  # nothing compressed: nothing cached


# --------------------------------------------------------------------------- damaged archives


def damaged(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) * 2 // 3]
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 64]) + data[middle + 64 :]


@pytest.mark.parametrize("fmt", ["gzip", "xz", "bz2", "zstd"])
@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_a_damaged_archive_is_one_located_line_naming_the_file_and_offset_exit_2(tmp_path, fmt, how):
    blob = damaged(compress(jsonl_bytes(3000), fmt), how)
    path = tmp_path / f"pages.jsonl{SUFFIX[fmt]}"
    path.write_bytes(blob)
    result = validate(spec_file(tmp_path, "{kind: text, paths: ['pages.jsonl*'], documents: jsonl}", **SIZES))
    assert result.exit_code == 2, result.output
    [line] = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert re.match(r"error: .*spec\.yaml:\d+:\d+: data\.source\.paths\[0\]: ", line), line
    assert f"'pages.jsonl{SUFFIX[fmt]}'" in line and str(path) in line, line
    if how == "truncated":
        assert f"truncated {fmt} file: it ends at compressed byte {len(blob):,}" in line, line
    else:
        m = re.search(rf"corrupt {fmt} data at or before compressed byte ([\d,]+)", line)
        assert m, line  # where it was found: at the damage, or at the end of its member or frame (a checksum)
        assert len(blob) // 2 < int(m.group(1).replace(",", "")) <= len(blob), line


@pytest.mark.parametrize("fmt", ["gzip", "zstd"])
def test_the_corpus_reader_reports_a_truncated_archive_located_too(tmp_path, fmt):
    """The reading path (what the build and the room check use), not only the identity's."""
    path = tmp_path / f"a.jsonl{SUFFIX[fmt]}"
    blob = damaged(compress(jsonl_bytes(3000), fmt), "truncated")
    path.write_bytes(blob)
    with pytest.raises(DataError) as err:
        for _ in jsonl_records(DataFile(path.name, path, "data.source.paths[0]"), "text", "utf-8", "data.source"):
            pass
    assert err.value.field == "data.source.paths[0]"
    assert f"'{path.name}'" in err.value.message and f"compressed byte {len(blob):,}" in err.value.message


def test_zstd_cut_at_a_block_inside_a_frame_is_truncated_not_a_short_file(tmp_path):
    """zstd's reader stops quietly where a cut file ends: the frames are followed to tell a cut from an end."""
    data = jsonl_bytes(4000)
    blob = zstandard.ZstdCompressor(level=1).compress(data)
    for cut in (len(blob) - 1, len(blob) // 2, 7):
        path = tmp_path / f"cut{cut}.jsonl.zst"
        path.write_bytes(blob[:cut])
        with pytest.raises(comp.ArchiveError, match=f"truncated zstd file: it ends at compressed byte {cut:,}"):
            comp.content_digest(path)
    (tmp_path / "whole.zst").write_bytes(blob + zstandard.ZstdCompressor(level=1).compress(b"more\n"))
    assert comp.content_digest(tmp_path / "whole.zst")[1:] == digest_of(data + b"more\n")


def test_a_compressed_binary_file_is_reported_as_binary(tmp_path):
    (tmp_path / "a.txt").write_text("some text\n" * 2000)
    (tmp_path / "logo.png.gz").write_bytes(gzip.compress(bytes(range(256)) * 64))
    result = validate(spec_file(tmp_path, "{kind: text, paths: ['*']}", **SIZES))
    assert result.exit_code == 2, result.output
    [line] = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert "'logo.png.gz' looks binary once decompressed (gzip), not utf-8 text" in line, line


def test_a_compressed_parquet_file_is_refused_with_a_reason(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "t.parquet")
    (tmp_path / "t.parquet.gz").write_bytes(gzip.compress((tmp_path / "t.parquet").read_bytes()))
    (tmp_path / "t.parquet").unlink()
    result = validate(spec_file(tmp_path, "{kind: text, paths: ['t.parquet.gz'], documents: parquet}", **SIZES))
    assert result.exit_code == 2 and "'t.parquet.gz' is a gzip-compressed file: Parquet files are read as they are" \
        in result.output, result.output


def test_a_compressed_file_beside_its_decompressed_copy_is_a_warning(tmp_path):
    data = jsonl_bytes(2000)
    (tmp_path / "a.jsonl").write_bytes(data)
    (tmp_path / "a.jsonl.zst").write_bytes(compress(data, "zstd"))
    result = validate(spec_file(tmp_path, "{kind: text, paths: ['a.jsonl*'], documents: jsonl}", **SIZES))
    assert result.exit_code == 0, result.output
    assert "'a.jsonl.zst' is read as 'a.jsonl' (decompressed), as 'a.jsonl' is" in result.output


def test_validate_checks_the_decompressed_jsonl_and_its_size(tmp_path):
    good = jsonl_bytes(300)
    bad = good.replace(b'{"id": 7,', b'{"id": 7', 1)  # line 9 (a blank line before it) is not JSON
    (tmp_path / "bad.jsonl.xz").write_bytes(lzma.compress(bad))
    result = validate(spec_file(tmp_path, "{kind: text, paths: ['bad.jsonl.xz'], documents: jsonl}", **SIZES))
    assert result.exit_code == 2 and "'bad.jsonl.xz' line 9: not JSON" in result.output, result.output
    (tmp_path / "small.jsonl.bz2").write_bytes(bz2.compress(jsonl_bytes(100)))  # too few tokens for the splits
    result = validate(spec_file(tmp_path, "{kind: text, paths: ['small.jsonl.bz2'], documents: jsonl}", **SIZES))
    assert result.exit_code == 2 and "data.train_tokens: the 100 documents hold" in result.output, result.output


def test_a_cut_character_or_bad_encoding_inside_a_compressed_file_is_located_in_decompressed_bytes(tmp_path):
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"fine text " * 20_000 + b"\xff and more"))
    with pytest.raises(DataError, match=r"cannot decode gzip-decompressed 'a.txt.gz' as utf-8: invalid start byte "
                                        r"at byte 200,000"):
        build(tmp_path, {"kind": "text", "paths": ["a.txt.gz"]}, "c")


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize("fmt", ["gzip", "zstd"])
def test_memory_is_bounded_by_one_record_never_the_whole_file(tmp_path, fmt):
    n = 30_000_000
    text = ("lorem ipsum dolor sit amet " * (n // 27 + 1))[:n]
    one = (json.dumps({"id": 0, "text": text}) + "\n").encode()
    big = tmp_path / f"one.jsonl{SUFFIX[fmt]}"
    big.write_bytes(gzip.compress(one, 1) if fmt == "gzip" else zstandard.ZstdCompressor(level=1).compress(one))
    del one, text
    tracemalloc.start()
    try:
        got = [len(t) for _, t in jsonl_records(DataFile(big.name, big, "x"), "text", "utf-8", "f")]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == [n]
    assert peak < 2.5 * n, f"peak {peak:,} for a record of {n:,} bytes"  # the line and its field, as uncompressed

    many = b"".join((json.dumps({"id": i, "text": f"record {i} " * 300}) + "\n").encode() for i in range(10_000))
    path = tmp_path / f"many.jsonl{SUFFIX[fmt]}"
    path.write_bytes(gzip.compress(many, 1) if fmt == "gzip" else zstandard.ZstdCompressor(level=1).compress(many))
    tracemalloc.start()
    try:
        count = sum(1 for _ in jsonl_records(DataFile(path.name, path, "x"), "text", "utf-8", "f"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 10_000
    assert peak < 4 << 20 < len(many) // 8, f"peak {peak:,} reading {len(many):,} decompressed bytes"


# --------------------------------------------------------------------------- the digest cache


def test_a_second_plan_does_not_decompress_again_and_a_changed_file_is(tmp_path, digest_cache, monkeypatch):
    monkeypatch.setattr(comp, "SETTLE_NS", 0)  # files just written count as settled
    data = jsonl_bytes(500)
    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(compress(data, "zstd"))
    source = "{kind: text, paths: ['a.jsonl.zst'], documents: jsonl}"
    key = corpus_key(tmp_path, source)
    assert (digest_cache / comp.CACHE_FILE).exists()
    entry = json.loads((digest_cache / comp.CACHE_FILE).read_text())["entries"][str(path)]
    assert entry[5:] == ["zstd", *digest_of(data)]

    def no_decompressing(*args):
        raise AssertionError("decompressed again")

    monkeypatch.setattr(comp, "_reader", no_decompressing)
    monkeypatch.setattr(comp, "_CACHE", comp._DigestCache())  # a new process: only the cache file
    assert corpus_key(tmp_path, source) == key
    monkeypatch.undo()
    monkeypatch.setenv("HEPC_CACHE_DIR", str(digest_cache))
    monkeypatch.setattr(comp, "SETTLE_NS", 0)
    path.write_bytes(compress(data + b'{"text": "one more"}\n', "zstd"))  # a new signature: decompressed again
    assert corpus_key(tmp_path, source) != key


def test_a_cached_digest_the_bytes_do_not_have_stops_the_build(tmp_path, digest_cache, monkeypatch):
    """Consuming bytes never trusts a signature: reading the whole file checks the cached digest."""
    monkeypatch.setattr(comp, "SETTLE_NS", 0)
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(compress(jsonl_bytes(500), "gzip"))
    comp.content_digest(path)
    comp.flush_cache()
    cache = json.loads((digest_cache / comp.CACHE_FILE).read_text())
    cache["entries"][str(path)][6] = "0" * 32  # as if the bytes changed under the same signature
    (digest_cache / comp.CACHE_FILE).write_text(json.dumps(cache))
    monkeypatch.setattr(comp, "_CACHE", comp._DigestCache())
    assert comp.content_digest(path)[1] == "0" * 32  # deciding what is cached trusts the signature ...
    with pytest.raises(DataError, match="differ from the digest cached for it"):  # ... reading it all does not
        for _ in jsonl_records(DataFile(path.name, path, "data.source.paths[0]"), "text", "utf-8", "data.source"):
            pass
    assert str(path) not in json.loads((digest_cache / comp.CACHE_FILE).read_text())["entries"]


# --------------------------------------------------------------------------- hepc data


def test_hepc_data_shows_compressed_and_decompressed_bytes_per_split(tmp_path):
    for k, fmt in enumerate(["gzip", "zstd", None]):
        data = jsonl_bytes(700, seed=k)
        name = f"p{k}.jsonl" + (SUFFIX[fmt] if fmt else "")
        (tmp_path / name).write_bytes(compress(data, fmt) if fmt else data)
    spec = spec_file(tmp_path, "{kind: text, paths: ['p*'], documents: jsonl}", **SIZES)
    result = CliRunner().invoke(app, ["data", str(spec), "--store", str(tmp_path / "store"), "--json"])
    assert result.exit_code == 0, result.output
    [corpus] = json.loads(result.stdout)["corpora"]
    files = corpus["source"]["file_bytes"]
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("p*"))
    assert files["files"] == 3 and files["compressed_files"] == {"gzip": 1, "zstd": 1}
    assert files["compressed_bytes"] == on_disk
    assert files["decompressed_bytes"] == sum(len(jsonl_bytes(700, seed=k)) for k in range(3))
    for name in ("val", "heldout", "train"):
        split = corpus["splits"][name]
        # a split's share of the files: more than its text (JSON and other fields), less once compressed
        assert split["compressed_bytes"] < split["bytes"] < split["decompressed_bytes"], (name, split)
    text = CliRunner().invoke(app, ["data", str(spec), "--store", str(tmp_path / "store")]).stdout
    assert re.search(r"files: 3 \(2 compressed: gzip 1, zstd 1\), [\d,]+ bytes on disk, [\d,]+ decompressed", text), text
    assert re.search(r"split .* compressed  decompressed", text), text
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "a.jsonl").write_bytes(jsonl_bytes(2000))
    plain = spec_file(tmp_path, "{kind: text, paths: ['u/*'], documents: jsonl}", **SIZES)
    result = CliRunner().invoke(app, ["data", str(plain), "--store", str(tmp_path / "store"), "--json"])
    [corpus] = json.loads(result.stdout)["corpora"]
    assert corpus["source"]["file_bytes"] is None and corpus["splits"]["val"]["compressed_bytes"] is None
