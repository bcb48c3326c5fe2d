"""Measured throughput, from what the store already holds (read-only, no torch).

Throughput is measured on committed cycle objects with the same *model shape* (the model's
dimensions and seq_len, from the step params; dropout does not count): each cycle's summary
holds the tokens it trained and the seconds its training took (`summary.tokens`, `summary.wall_s`),
and its manifest's provenance says where it ran (`device`, e.g. "cpu" or "cuda:NVIDIA H200", and
`threads`; objects written before hepc recorded them have an unknown device, used when nothing
better exists, and said so). Only the newest `SAMPLES_PER_SHAPE` objects of a shape count, and at
most `MAX_READS` manifests per kind are read, so this stays cheap on a large store.

A distilled cycle also runs the teacher forward for every token (a third of a training step's
FLOPs, see hepc.compile.compiler): its tokens count `DISTILL_COST` times when throughput is measured and
when work is estimated, so a mix of plain and distilled cycles is estimated fairly.

Other kinds (score, prior, curve, logits, corpus) are estimated from the mean wall time of
committed steps of the same kind (scores and logits: of snapshots of the same model shape); a kind
without measurements is left out, and the estimate says what it covers."""

from __future__ import annotations

import heapq
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from hepc.store.safe_io import read_json

MANIFEST_LIMIT = 4 << 20  # a cycle or score manifest is a few KB
SUMMARY_LIMIT = 1 << 20
SAMPLES_PER_SHAPE = 50
MAX_READS = 200  # manifests read per kind, newest first
DISTILL_COST = 4 / 3  # teacher forward = 1/3 of forward+backward FLOPs per token (hepc.compile.compiler)
SHAPED_KINDS = ("score", "logits")  # their cost depends on the model shape (context: model, seq_len)


# --------------------------------------------------------------------------- shapes and devices


def shape_of(params) -> str | None:
    """'d_model=32 n_head=2 n_layer=1 seq_len=32' from a cycle's params (or a score's context)."""
    if not isinstance(params, dict):
        return None
    model, seq_len = params.get("model"), params.get("seq_len")
    if not isinstance(model, dict) or not is_int(seq_len):
        return None
    dims = [
        f"{k}={v}"
        for k, v in sorted(model.items())
        if k != "dropout" and isinstance(v, (int, float, str, bool)) and isinstance(k, str)
    ]
    return " ".join([*dims, f"seq_len={seq_len}"])


def device_family(device) -> str | None:
    """'cuda' for 'cuda:NVIDIA H200', 'cpu' for 'cpu'; None when not recorded."""
    if not isinstance(device, str) or not device.strip():
        return None
    return device.split(":", 1)[0].strip().lower()


def wanted_device(runtime_device: str | None) -> str:
    """The device family a spec's steps will run on: runtime.device, or for `auto` a cheap guess
    (an NVIDIA driver with GPUs, and CUDA_VISIBLE_DEVICES not hiding them: cuda; else cpu)."""
    if runtime_device in ("cpu", "cuda"):
        return runtime_device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "cpu"
    try:
        with os.scandir("/proc/driver/nvidia/gpus") as it:
            return "cuda" if any(True for _ in it) else "cpu"
    except OSError:
        return "cpu"


# --------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Sample:
    """One committed step, as measured."""

    kind: str
    key: str
    shape: str | None
    wall_s: float
    tokens: float = 0.0  # cycles: tokens trained
    work: float = 0.0  # cycles: cost-weighted tokens (a distilled token counts DISTILL_COST)
    device: str | None = None
    threads: int | None = None


@dataclass(frozen=True)
class Rate:
    """Measured training throughput of one model shape."""

    shape: str
    tokens_per_s: float  # tokens trained per second (what progress bars show)
    work_per_s: float  # cost-weighted tokens per second (what estimates divide by)
    samples: int
    devices: tuple[str, ...]  # as recorded ("unknown" for objects without a recorded device)
    threads: tuple[int, ...]

    @property
    def unknown_device(self) -> bool:
        return self.devices == ("unknown",)

    def to_json(self) -> dict:
        return {
            "shape": self.shape,
            "tokens_per_s": round(self.tokens_per_s, 3),
            "samples": self.samples,
            "devices": list(self.devices),
            "threads": list(self.threads),
            "unknown_device": self.unknown_device,
        }


@dataclass(frozen=True)
class StepTime:
    """Mean measured wall time of committed steps of one kind (and shape, for scores and logits)."""

    kind: str
    shape: str | None
    wall_s: float
    samples: int


@dataclass
class Measured:
    device: str | None  # the device family measurements were matched to (None: any)
    rates: dict[str, Rate] = field(default_factory=dict)  # shape → Rate
    step_times: dict[tuple[str, str | None], StepTime] = field(default_factory=dict)


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _positive(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, int) and x >= 2**53):
        return None
    x = float(x)
    return x if math.isfinite(x) and x > 0 else None


def _newest_objects(store_root: Path, kind: str, limit: int) -> list[Path]:
    """The newest `limit` object folders of `kind` (by the folder's mtime: its commit), never following links."""
    folder = Path(store_root) / "objects" / kind
    if folder.is_symlink() or not folder.is_dir():
        return []
    entries = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                name = e.name
                if name.startswith(".") or len(name) <= 13 or name[-13] != "-":
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        entries.append((e.stat(follow_symlinks=False).st_mtime, e.path))
                except OSError:
                    continue
    except OSError:
        return []
    return [Path(p) for _, p in heapq.nlargest(limit, entries)]


def _read_dict(path: Path, limit: int) -> dict | None:
    try:
        value = read_json(path, limit)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _provenance(manifest: dict) -> tuple[str | None, int | None, float | None]:
    prov = manifest.get("provenance")
    if not isinstance(prov, dict):
        return None, None, None
    device = prov.get("device") if isinstance(prov.get("device"), str) and prov.get("device").strip() else None
    threads = prov.get("threads") if is_int(prov.get("threads")) and 0 < prov["threads"] < 2**31 else None
    return device, threads, _positive(prov.get("wall_s"))


def cycle_sample(obj: Path, manifest: dict) -> Sample | None:
    """A committed cycle as a throughput sample (None when its summary lacks tokens or wall time)."""
    params = manifest.get("params") if isinstance(manifest.get("params"), dict) else {}
    summary = manifest.get("summary")
    if not isinstance(summary, dict) or None in (_positive(summary.get("tokens")), _positive(summary.get("wall_s"))):
        summary = _read_dict(obj / "summary.json", SUMMARY_LIMIT) or {}
    tokens, wall = _positive(summary.get("tokens")), _positive(summary.get("wall_s"))
    if tokens is None or wall is None:
        return None
    device, threads, _ = _provenance(manifest)
    factor = DISTILL_COST if params.get("distill") else 1.0
    key = manifest.get("key") if isinstance(manifest.get("key"), str) else obj.name
    return Sample("cycle", key, shape_of(params), wall, tokens, tokens * factor, device, threads)


def _choose(samples: list[Sample], device: str | None, threads: int | None) -> list[Sample]:
    """Samples on the wanted device (on a CPU, with the same thread count if some have it); failing
    that, samples whose device was not recorded. Samples known to be from another device never count."""
    known = [s for s in samples if s.device is not None and (device is None or device_family(s.device) == device)]
    if known:
        if threads is not None and device == "cpu":
            same = [s for s in known if s.threads == threads]
            return same or known
        return known
    return [s for s in samples if s.device is None]


def rate_of(shape: str, samples: list[Sample]) -> Rate | None:
    wall = sum(s.wall_s for s in samples)
    if not samples or wall <= 0:
        return None
    devices = tuple(sorted({s.device or "unknown" for s in samples}))
    threads = tuple(sorted({s.threads for s in samples if s.threads is not None}))
    return Rate(shape, sum(s.tokens for s in samples) / wall, sum(s.work for s in samples) / wall, len(samples),
                devices, threads)  # fmt: skip


def measure(
    store_root: str | Path,
    shapes: set[str],
    kinds: dict[str, set[str | None]] | None = None,
    *,
    device: str | None = None,
    threads: int | None = None,
) -> Measured:
    """Measured throughput of each model shape in `shapes` and mean wall times of the other `kinds`
    ({kind: shapes wanted, None for unshaped kinds}), on `device` (a family: 'cpu', 'cuda'; None: any).
    Reads at most MAX_READS manifests per kind, newest first; writes nothing."""
    root = Path(store_root)
    kinds = {k: v for k, v in (kinds or {}).items() if k != "cycle"}
    out = Measured(device)
    wanted_shapes = set(shapes)
    for shaped in SHAPED_KINDS:
        wanted_shapes |= {s for s in kinds.get(shaped, set()) if s is not None}
    cycle_shapes: dict[str, str | None] = {}  # cycle key → shape (to match scores to their snapshots)
    by_shape: dict[str, list[Sample]] = {}
    if wanted_shapes:
        for obj in _newest_objects(root, "cycle", MAX_READS):
            manifest = _read_dict(obj / "manifest.json", MANIFEST_LIMIT)
            if manifest is None:
                continue
            shape = shape_of(manifest.get("params"))
            if isinstance(manifest.get("key"), str):
                cycle_shapes[manifest["key"]] = shape
            if shape not in shapes or len(by_shape.get(shape, [])) >= SAMPLES_PER_SHAPE:
                continue
            sample = cycle_sample(obj, manifest)
            if sample is not None:
                by_shape.setdefault(shape, []).append(sample)
    for shape, samples in by_shape.items():
        rate = rate_of(shape, _choose(samples, device, threads))
        if rate is not None:
            out.rates[shape] = rate
    for kind, kind_shapes in kinds.items():
        groups: dict[str | None, list[Sample]] = {}
        for obj in _newest_objects(root, kind, MAX_READS):
            manifest = _read_dict(obj / "manifest.json", MANIFEST_LIMIT)
            if manifest is None:
                continue
            shape = _object_shape(kind, manifest, cycle_shapes)
            if shape not in kind_shapes or len(groups.get(shape, [])) >= SAMPLES_PER_SHAPE:
                continue
            dev, thr, wall = _provenance(manifest)
            if wall is not None:
                groups.setdefault(shape, []).append(Sample(kind, str(manifest.get("key")), shape, wall, device=dev,
                                                           threads=thr))  # fmt: skip
        for shape, samples in groups.items():
            chosen = _choose(samples, device, threads)
            if chosen:
                mean = sum(s.wall_s for s in chosen) / len(chosen)
                out.step_times[(kind, shape)] = StepTime(kind, shape, mean, len(chosen))
    return out


def _object_shape(kind: str, manifest: dict, cycle_shapes: dict[str, str | None]) -> str | None:
    """A committed score's (logits') model shape: that of its snapshot cycle, when that was read."""
    if kind not in SHAPED_KINDS:
        return None
    inputs = manifest.get("inputs") if isinstance(manifest.get("inputs"), dict) else {}
    snap = inputs.get("snapshot") if kind == "score" else inputs.get("snapshots")
    if isinstance(snap, list):
        snap = snap[0] if snap else None
    return cycle_shapes.get(snap) if isinstance(snap, str) else None
