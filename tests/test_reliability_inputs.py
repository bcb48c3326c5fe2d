"""Reliability of what hepc reads: spec files and data files that are not what they seem.

Spec files must be regular files, read with a bound: a FIFO must not block `hepc validate`, and a
device such as /dev/zero must not be read forever. Text sources stream their files: memory stays
bounded whatever a file's size, and the corpus is byte-identical to one built from whole files.
A data path that reaches special files (FIFOs, devices, /proc), or a file that vanishes or cannot
be read, is a located message naming the `paths[i]` entry and the file, never a traceback or a hang.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import reference_corpus

from hepc.data import DataError, build_corpus, identity, source_identity
from hepc.data import sources as data_sources
from hepc.data.carve import DEFAULT_MAX_DOC_TOKENS
from hepc.data.sources import Prefix, iter_documents
from hepc.errors import SpecError
from hepc.spec.load import load_spec
from hepc.spec.yaml_read import MAX_SPEC_BYTES

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny.yaml"
EOT = 256
BYTES = {"kind": "bytes"}
LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")


def cli(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    """Run `hepc ARGS` in a subprocess that must end within `timeout`; never a traceback."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    command = [sys.executable, "-m", "hepc.cli", *args]
    out = subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    assert "Traceback" not in out.stderr, out.stderr
    return out, time.monotonic() - start


def text_spec(folder: Path, paths: list[str], name: str = "spec.yaml") -> Path:
    """The tiny fixture with a text source reading `paths` (relative to `folder`), written to folder/name."""
    source = "  source: {kind: text, paths: " + json.dumps(paths) + "}"
    text, n = re.subn(r"(?m)^  source: \{kind: synthetic.*$", lambda _: source, TINY.read_text())
    assert n == 1
    spec = folder / name
    spec.write_text(text)
    return spec


@pytest.fixture
def no_hang():
    """Fail (instead of hanging forever) when the test blocks for more than 20 s."""

    def fail(signum, frame):
        raise TimeoutError("blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- 1. spec files


def test_spec_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    out, seconds = cli("validate", str(fifo), timeout=30)
    assert out.returncode == 2 and seconds < 20, out.stderr
    assert out.stderr.strip() == f"error: {fifo}: is a FIFO, not a spec file", out.stderr


def test_spec_device_is_refused_without_reading_it():
    out, seconds = cli("validate", "/dev/zero", timeout=30)
    assert out.returncode == 2 and seconds < 20, out.stderr
    assert out.stderr.strip() == "error: /dev/zero: is a character device, not a spec file", out.stderr


def test_spec_larger_than_the_bound_is_refused(tmp_path):
    spec = tmp_path / "big.yaml"
    spec.write_bytes(b"# " + b"x" * (2 * MAX_SPEC_BYTES) + b"\n")
    out, _ = cli("validate", str(spec), timeout=30)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"error: {spec}: spec is too large ("), out.stderr
    assert f"at most {MAX_SPEC_BYTES:,}" in out.stderr


def test_spec_special_files_in_process(tmp_path, no_hang):
    """Socket, FIFO and devices: refused by name and kind; a link to a regular file is read."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    cases = {fifo: "is a FIFO", Path("/dev/null"): "is a character device", tmp_path: "is a directory"}
    sock_path = tmp_path / "s.yaml"
    if len(str(sock_path)) < 100:  # AF_UNIX path limit
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(sock_path))
        cases[sock_path] = "is a socket"
    try:
        for path, message in cases.items():
            with pytest.raises(SpecError) as err:
                load_spec(path)
            assert [(p.where, p.message) for p in err.value.problems] == [(str(path), f"{message}, not a spec file")]
    finally:
        if sock_path in cases:
            sock.close()
    link = tmp_path / "link.yaml"
    link.symlink_to(TINY)
    assert load_spec(link).spec == load_spec(TINY).spec


def test_spec_crlf_and_bad_utf8_read_as_before(tmp_path):
    crlf = tmp_path / "crlf.yaml"
    crlf.write_bytes(TINY.read_bytes().replace(b"\n", b"\r\n"))
    assert load_spec(crlf).spec == load_spec(TINY).spec
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("# café\n".encode("latin-1") + TINY.read_bytes())
    with pytest.raises(SpecError) as err:
        load_spec(latin)
    assert err.value.problems[0].message.startswith("cannot read spec: 'utf-8' codec can't decode")


# --------------------------------------------------------------------------- 2. streamed text sources


def whole_file_corpus(folder: Path, encoding: str, seed: int, sizes: dict, cap: int = DEFAULT_MAX_DOC_TOKENS) -> tuple[dict, dict]:
    """The corpus as a straightforward reader builds it (the rule of docs/data-splits.md): each whole
    file decoded and re-encoded as UTF-8, then the rule applied plainly (tests/data_helpers.py)."""
    docs = [(path.name, path.read_bytes().decode(encoding).encode("utf-8")) for path in sorted(folder.glob("*.txt"))]
    arrays, _, meta = reference_corpus(docs, cap, seed, sizes)
    return arrays, meta


def write_texts(folder: Path, encoding: str) -> None:
    """30 short documents, an empty one and one longer than any split, all non-ASCII in places."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    words = ["lorem", "ipsum", "café", "naïve", "über", "ß", "±ÿ", "x"]
    if encoding != "latin-1":
        words += ["Ωmega", "✓", "😀", "日本語"]
    for i in range(30):
        text = f"<{i:02d}> " + " ".join(rng.choice(words, int(rng.integers(20, 120))))
        (folder / f"doc{i:02d}.txt").write_bytes(text.encode(encoding))
    (folder / "empty.txt").write_bytes(b"")
    (folder / "long.txt").write_bytes(" ".join(rng.choice(words, 12_000)).encode(encoding))


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "utf-16"])
@pytest.mark.parametrize("chunk", [5, 1 << 20], ids=["chunk5", "chunk1M"])
def test_streamed_text_corpus_matches_whole_files(tmp_path, monkeypatch, encoding, chunk):
    """Byte-identical arrays and meta, also when chunks cut characters and the long file is cut."""
    monkeypatch.setattr(data_sources, "_CHUNK", chunk)
    folder = tmp_path / "texts"
    write_texts(folder, encoding)
    sizes = {"train_tokens": 6_000, "val_tokens": 1_500, "heldout_tokens": 800}
    source = {"kind": "text", "paths": ["*.txt"], "encoding": encoding}
    for seed in (0, 1, 2):
        out = tmp_path / f"out{seed}"
        meta = build_corpus(source, BYTES, seed=seed, base_dir=folder, out_dir=out, **sizes)
        expected, expected_meta = whole_file_corpus(folder, encoding, seed, sizes)
        for name, array in expected.items():
            got = np.load(out / f"{name}.npy")
            assert got.dtype == array.dtype and np.array_equal(got, array), (seed, name)
        assert {k: meta[k] for k in expected_meta} == expected_meta, seed
        assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["source_pieces"] > meta["source_documents"] + 50  # the long file was cut into pieces


def test_text_documents_are_prefixes_with_their_full_size(tmp_path):
    (tmp_path / "a.txt").write_text("é" * 1_000)
    doc = next(iter_documents({"kind": "text", "paths": ["a.txt"]}, tmp_path, 0, limit=11))
    assert doc == Prefix(("é" * 5).encode() + b"\xc3", 2_000)
    assert next(iter_documents({"kind": "text", "paths": ["a.txt"]}, tmp_path, 0)) == ("é" * 1_000).encode()


def test_decode_error_after_the_prefix_names_file_and_byte(tmp_path, monkeypatch):
    monkeypatch.setattr(data_sources, "_CHUNK", 1_000)
    (tmp_path / "a.txt").write_bytes(b"a" * 4_321 + b"\xff" + b"b" * 100)
    with pytest.raises(DataError) as err:
        next(iter_documents({"kind": "text", "paths": ["a.txt"]}, tmp_path, 0, limit=10))
    assert err.value.field == "data.source.encoding"
    assert err.value.message == "cannot decode 'a.txt' as utf-8: invalid start byte at byte 4,321"


CHILD = """
import sys
from pathlib import Path
from hepc.data.corpus import build_corpus
base = Path(sys.argv[1])
meta = build_corpus({"kind": "text", "paths": ["*.txt"]}, {"kind": "bytes"}, train_tokens=24_000, val_tokens=4_000,
                    heldout_tokens=2_000, seed=0, base_dir=base, out_dir=base / "out")
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print(meta["source_tokens"], hwm)
"""


def test_big_text_file_builds_in_bounded_memory(tmp_path):
    """A 300 MB single-file document adds far less than its size to the peak RSS of a small build.

    Every file is read to its end (each piece's key decides where it goes), so the big one is read
    whole, chunk by chunk: its tokens show in source_tokens; only the few pieces the splits take are kept.
    """
    peaks = {}
    for case, size in (("baseline", 10_000), ("big", 300 << 20)):
        folder = tmp_path / case
        folder.mkdir()
        for i in range(100):
            (folder / f"small{i:03d}.txt").write_text(f"document {i:03d} " * 20 + "x" * 9)
        with open(folder / "big.txt", "wb") as f:
            f.truncate(size)  # sparse: NUL bytes, valid UTF-8
        child = [sys.executable, "-c", CHILD, str(folder)]
        out = subprocess.run(child, check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr
        source_tokens, peak_kib = map(int, out.stdout.split()[-2:])  # VmHWM: this process's own peak, KiB (ru_maxrss can carry the parent's)
        assert source_tokens > size, (case, source_tokens)  # big.txt was read to its end
        peaks[case] = peak_kib / 1024
    assert peaks["big"] - peaks["baseline"] < 100, peaks


# --------------------------------------------------------------------------- 3. special data files


def refused(out: subprocess.CompletedProcess, command: str, spec: Path, entry: str, message: str) -> None:
    """`run` and `validate` exit 2 with one located error; `validate --data-elsewhere` (the data lives on
    another machine) warns and exits 0."""
    if command in ("run", "validate"):
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        located = rf"error: {re.escape(str(spec))}:\d+:\d+: {re.escape(entry)}: "
        assert len(lines) == 1 and re.match(located, lines[0]), out.stderr
    else:
        assert out.returncode == 0, out.stderr
        assert f"warning: data not available here: {entry}: " in out.stderr, out.stderr
    assert message in out.stderr, out.stderr


@LINUX_PROC
@pytest.mark.parametrize("command", ["validate", "run"])
def test_glob_over_proc_is_a_located_error(tmp_path, command):
    """/proc/self/* holds files that are listed as regular but cannot be read (EINVAL, EIO)."""
    spec = text_spec(tmp_path, ["/proc/self/*"])
    store = tmp_path / "store"
    out, seconds = cli(command, str(spec), *(["--store", str(store)] if command == "run" else []))
    assert seconds < 30
    refused(out, command, spec, "data.source.paths[0]", "cannot read '")
    assert not store.exists()


@pytest.fixture
def data_with_fifo(tmp_path):
    """tmp_path/data with four text files and a FIFO named `pipe`."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"{i}.txt").write_text(f"hello world {i} " * 2_000)
    os.mkfifo(data / "pipe")
    return tmp_path


@pytest.mark.parametrize(
    "paths, entry, message",
    [
        (["data/*.txt", "data/pipe"], "data.source.paths[1]", "'data/pipe' is a FIFO, not a regular file"),
        (["data/p*"], "data.source.paths[0]", "'data/p*' matched no regular files"),
        (["data/*.txt", "/dev/zero"], "data.source.paths[1]", "'/dev/zero' is a character device, not a regular file"),
    ],
    ids=["literal-fifo", "glob-only-fifo", "device"],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_special_data_files_are_located_errors(data_with_fifo, command, paths, entry, message):
    spec = text_spec(data_with_fifo, paths)
    store = data_with_fifo / "store"
    out, seconds = cli(command, str(spec), *(["--store", str(store)] if command == "run" else []))
    assert seconds < 30
    refused(out, command, spec, entry, message)
    assert not store.exists()


def test_glob_skips_a_fifo_among_regular_files(data_with_fifo, no_hang):
    spec = text_spec(data_with_fifo, ["data/*"])
    out, _ = cli("validate", str(spec), timeout=30)
    other = [line for line in out.stderr.splitlines() if "warning" in line and "the largest document" not in line]
    assert out.returncode == 0 and not other, out.stderr  # (its files are larger than 5 % of the tiny splits)
    source = {"kind": "text", "paths": ["data/*"]}
    assert [f["name"] for f in source_identity(source, data_with_fifo)["files"]] == [f"data/{i}.txt" for i in range(4)]
    meta = build_corpus(source, BYTES, train_tokens=20_000, val_tokens=4_000, heldout_tokens=2_000, seed=0,
                        base_dir=data_with_fifo, out_dir=data_with_fifo / "out")
    assert meta["tokens"]["train"] == 18_000


@LINUX_PROC
def test_unreadable_file_is_a_located_error(tmp_path):
    """/proc/self/mem is a regular file whose first read fails (EIO), even for root."""
    (tmp_path / "data.txt").write_text("text")
    with pytest.raises(DataError) as err:
        source_identity({"kind": "text", "paths": ["data.txt", "/proc/self/mem"]}, tmp_path)
    assert err.value.field == "data.source.paths[1]"
    assert err.value.message.startswith("cannot read 'mem' (/proc/") and "Input/output error" in err.value.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_without_read_permission_is_a_located_error(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "b.txt").chmod(0)
    with pytest.raises(DataError) as err:
        source_identity({"kind": "text", "paths": ["*.txt"]}, tmp_path)
    assert err.value.field == "data.source.paths[0]" and "'b.txt'" in err.value.message
    assert "Permission denied" in err.value.message


def test_file_vanishing_before_its_digest_is_a_located_error(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    listed = identity.list_data_files

    def list_then_delete(*args, **kwargs):
        files = listed(*args, **kwargs)
        files[1].path.unlink()
        return files

    monkeypatch.setattr(identity, "list_data_files", list_then_delete)
    with pytest.raises(DataError) as err:
        source_identity({"kind": "text", "paths": ["a.txt", "b.txt"]}, tmp_path)
    assert err.value.field == "data.source.paths[1]"
    assert err.value.message.startswith("cannot read 'b.txt' (") and "No such file or directory" in err.value.message


@pytest.mark.parametrize("change", ["deleted", "fifo", "directory"])
def test_file_changing_between_listing_and_reading_is_a_located_error(tmp_path, change, no_hang):
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text(name * 100)
    source = {"kind": "text", "paths": ["a.txt", "*.txt"]}
    documents = iter_documents(source, tmp_path, seed=0, limit=1_000)  # lists the files now
    victim = tmp_path / "b.txt"
    victim.unlink()
    if change == "fifo":
        os.mkfifo(victim)
    elif change == "directory":
        victim.mkdir()
    with pytest.raises(DataError) as err:
        list(documents)
    assert err.value.field == "data.source.paths[1]"
    reason = {
        "deleted": "No such file or directory",
        "fifo": "is a FIFO, not a regular file",
        "directory": "is a directory",
    }
    assert err.value.message.startswith("cannot read 'b.txt' (") and reason[change] in err.value.message
