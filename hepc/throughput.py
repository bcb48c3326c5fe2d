"""Measured throughput and wall-time estimates, from what the store already holds (read-only, no torch).

Throughput is measured on committed cycle objects with the same *model shape* (the model's
dimensions and seq_len, from the step params; dropout does not count): each cycle's summary
holds the tokens it trained and the seconds its training took (`summary.tokens`, `summary.wall_s`),
and its manifest's provenance says where it ran (`device`, e.g. "cpu" or "cuda:NVIDIA H200", and
`threads`; objects written before hepc recorded them have an unknown device, used when nothing
better exists, and said so). Only the newest `SAMPLES_PER_SHAPE` objects of a shape count, and at
most `MAX_READS` manifests per kind are read, so this stays cheap on a large store.

A distilled cycle also runs the teacher forward for every token (a third of a training step's
FLOPs, see hepc.compile): its tokens count `DISTILL_COST` times when throughput is measured and
when work is estimated, so a mix of plain and distilled cycles is estimated fairly.

Other kinds (score, prior, curve, logits, corpus) are estimated from the mean wall time of
committed steps of the same kind (scores and logits: of snapshots of the same model shape); a kind
without measurements is left out, and the estimate says what it covers.

The estimate of the remaining work: seconds of every step still to run (in-flight steps: what their
own live progress says is left), divided across the workers, but never less than the longest
trajectory's chain of cycles (a trajectory's cycles run one after another) nor the longest step.
"""

from __future__ import annotations

import heapq
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from hepc.safe_io import read_json
from hepc.wording import count

MANIFEST_LIMIT = 4 << 20  # a cycle or score manifest is a few KB
SUMMARY_LIMIT = 1 << 20
SAMPLES_PER_SHAPE = 50
MAX_READS = 200  # manifests read per kind, newest first
DISTILL_COST = 4 / 3  # teacher forward = 1/3 of forward+backward FLOPs per token (hepc.compile)
SHAPED_KINDS = ("score", "logits")  # their cost depends on the model shape (context: model, seq_len)


# --------------------------------------------------------------------------- shapes and devices


def shape_of(params) -> str | None:
    """'d_model=32 n_head=2 n_layer=1 seq_len=32' from a cycle's params (or a score's context)."""
    if not isinstance(params, dict):
        return None
    model, seq_len = params.get("model"), params.get("seq_len")
    if not isinstance(model, dict) or not _is_int(seq_len):
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


def _is_int(x) -> bool:
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
    threads = prov.get("threads") if _is_int(prov.get("threads")) and 0 < prov["threads"] < 2**31 else None
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


# --------------------------------------------------------------------------- work still to do


@dataclass(frozen=True)
class Pending:
    """A step not committed yet. `remaining_s`: for a step in flight, what its live progress says is left."""

    key: str
    kind: str
    shape: str | None = None
    tokens: float = 0.0  # cycles: tokens still to train
    work: float = 0.0  # cycles: cost-weighted tokens still to train
    chain: str | None = None  # cycles: the trajectory (its first cycle's key)
    remaining_s: float | None = None


def pending_steps(graph, steps, done_fraction: dict[str, float] | None = None,
                  remaining_s: dict[str, float] | None = None) -> list[Pending]:  # fmt: skip
    """`steps` of `graph` as Pending work. `done_fraction`: a resumable cycle's share already
    trained (its checkpoint); `remaining_s`: in-flight steps' own estimates."""
    done_fraction, remaining_s = done_fraction or {}, remaining_s or {}
    roots: dict[str, str] = {}
    out = []
    for s in steps:
        shape, tokens, work, chain = None, 0.0, 0.0, None
        if s.kind == "cycle":
            shape = shape_of(s.params)
            left = 1.0 - min(1.0, max(0.0, float(done_fraction.get(s.key, 0.0))))
            tokens = float(s.context.get("tokens", 0)) * left
            flops = float(s.context.get("flops", 0.0) or 0.0)
            factor = (flops + float(s.context.get("teacher_flops", 0.0) or 0.0)) / flops if flops > 0 else 1.0
            work = tokens * factor
            chain = _chain_root(graph, s, roots)
        elif s.kind in SHAPED_KINDS:
            shape = shape_of(s.context)
        out.append(Pending(s.key, s.kind, shape, tokens, work, chain, remaining_s.get(s.key)))
    return out


def _chain_root(graph, step, roots: dict[str, str]) -> str:
    """The first cycle of `step`'s trajectory (following `prev` inputs)."""
    path, key = [], step.key
    while key not in roots:
        path.append(key)
        try:
            prev = graph[key].inputs.get("prev")
        except KeyError:
            prev = None
        if not isinstance(prev, str) or prev in path:
            roots[key] = key
            break
        key = prev
    root = roots[key]
    for k in path:
        roots[k] = root
    return root


# --------------------------------------------------------------------------- the estimate


def estimate(pending: list[Pending], measured: Measured, workers: int = 1) -> dict:
    """Seconds until `pending` is done, with what the number rests on (`basis`).

    eta_s is None when cycles are to run and none of them has a measured throughput or live progress."""
    workers = max(1, int(workers))
    training_s = other_s = 0.0
    chains: dict[str, float] = {}
    longest = 0.0
    cycles = cycles_estimated = in_flight = in_flight_cycles = 0
    unmeasured_shapes: dict[str, int] = {}
    unmeasured_kinds: dict[str, int] = {}
    covered_kinds: dict[str, int] = {}
    used: dict[str, Rate] = {}
    for p in pending:
        is_cycle = p.kind == "cycle"
        cycles += is_cycle
        if p.remaining_s is not None:
            s = max(0.0, float(p.remaining_s))
            in_flight += 1
            in_flight_cycles += is_cycle
        elif is_cycle:
            rate = measured.rates.get(p.shape) if p.shape is not None else None
            if rate is None or rate.work_per_s <= 0:
                label = p.shape or "unknown shape"
                unmeasured_shapes[label] = unmeasured_shapes.get(label, 0) + 1
                continue
            used[rate.shape] = rate
            s = p.work / rate.work_per_s
        else:
            t = measured.step_times.get((p.kind, p.shape))
            if t is None:
                unmeasured_kinds[p.kind] = unmeasured_kinds.get(p.kind, 0) + 1
                continue
            covered_kinds[p.kind] = covered_kinds.get(p.kind, 0) + 1
            s = t.wall_s
        if is_cycle:
            cycles_estimated += 1
            training_s += s
            chain = p.chain or p.key
            chains[chain] = chains.get(chain, 0.0) + s
        else:
            other_s += s
        longest = max(longest, s)
    if not pending:
        eta = 0.0
    elif cycles and not cycles_estimated:
        eta = None
    else:
        eta = max((training_s + other_s) / workers, max(chains.values(), default=0.0), longest)
    result = {
        "eta_s": None if eta is None else round(eta, 1),
        "workers": workers,
        "steps": len(pending),
        "cycles": cycles,
        "cycles_estimated": cycles_estimated,
        "cycles_unmeasured": sum(unmeasured_shapes.values()),
        "in_flight": in_flight,
        "cycles_in_flight": in_flight_cycles,
        "training_s": round(training_s, 1),
        "other_s": round(other_s, 1),
        "covers": _covers(covered_kinds, unmeasured_kinds),
        "measured_kinds": covered_kinds,
        "unmeasured_kinds": unmeasured_kinds,
        "unmeasured_shapes": sorted(unmeasured_shapes),
        "throughput": [r.to_json() for r in used.values()],
        "device": measured.device,
        "partial": bool(eta is not None and unmeasured_shapes),
    }
    result["basis"] = describe(result)
    return result


def _covers(covered: dict[str, int], unmeasured: dict[str, int]) -> str:
    if not unmeasured:
        return "all steps"
    if not covered:
        return "training only"
    return "training and " + ", ".join(f"{k} steps" for k in sorted(covered)) + " only"


def human_duration(seconds: float) -> str:
    """'45 s', '12 min', '1 h 12 min', '3 d 4 h'."""
    s = max(0.0, float(seconds))
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        h, m = divmod(round(s / 60), 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(round(s / 3600), 24)
    return f"{d} d {h} h" if h else f"{d} d"


def _throughput_text(rates: list[dict]) -> str:
    if len(rates) == 1:
        r = rates[0]
        where = "an unrecorded device" if r["unknown_device"] else " and ".join(r["devices"])
        n = "/".join(map(str, r["threads"]))
        threads = f" ({n} thread{'' if n == '1' else 's'})" if r["threads"] and not r["unknown_device"] else ""
        return f"{r['tokens_per_s']:,.0f} tok/s measured on {where}{threads} over {count(r['samples'], 'cycle')}"
    lo = min(r["tokens_per_s"] for r in rates)
    hi = max(r["tokens_per_s"] for r in rates)
    return f"measured throughput of {len(rates)} model shapes ({lo:,.0f}-{hi:,.0f} tok/s)"


def describe(est: dict) -> str:
    """What an estimate rests on, in words (the `basis` of `estimate`)."""
    if est["steps"] == 0:
        return "all steps committed"
    if est["eta_s"] is None:
        shapes = "; ".join(est["unmeasured_shapes"])
        return f"no measured throughput for this model shape yet ({shapes})"
    parts = []
    queued = est["cycles_estimated"] - est["cycles_in_flight"]
    if est["throughput"] and queued:
        parts.append(f"{count(queued, 'cycle')} at {_throughput_text(est['throughput'])}")
    if est["in_flight"]:
        n = est["in_flight"]
        parts.append(f"{count(n, 'step')} in flight, by {'its' if n == 1 else 'their'} own progress")
    if est["measured_kinds"]:
        n = sum(est["measured_kinds"].values())
        parts.append(f"{count(n, 'other step')} at measured wall times")
    if est["cycles_unmeasured"]:
        parts.append(
            f"not counted: {count(est['cycles_unmeasured'], 'cycle')} of a model shape not measured yet "
            f"({'; '.join(est['unmeasured_shapes'])})"
        )
    if est["unmeasured_kinds"]:
        left = ", ".join(f"{n} {k}" for k, n in sorted(est["unmeasured_kinds"].items()))
        parts.append(f"covers {est['covers']} (not measured yet: {left})")
    return "; ".join(parts) or "nothing measured"


# --------------------------------------------------------------------------- `hepc plan`


def plan_estimate(plan, store_root: str | Path, runtime) -> dict | None:
    """The estimate of a plan's new work, or None when no cycle to run has a measured throughput
    for its model shape and device in this store (or nothing is to run)."""
    todo = [p.step for p in plan.to_run]
    if not any(s.kind == "cycle" for s in todo):
        return None
    from hepc.store import Store

    store = Store(store_root)
    done = {
        p.step.key: done_fraction(store.work_status(p.step.key))
        for p in plan.to_run
        if p.status == "resumable" and p.step.kind == "cycle"
    }
    pending = pending_steps(plan.compiled.graph, todo, done)
    measured = measure_for(store_root, pending, runtime)
    jobs = getattr(runtime, "jobs", None)
    est = estimate(pending, measured, workers=jobs or 1)
    if not est["cycles_estimated"]:
        return None
    est["workers_from"] = "runtime.jobs" if jobs else "default"
    return est


def _wanted(pending: list[Pending]) -> tuple[set[str], dict[str, set[str | None]]]:
    shapes = {p.shape for p in pending if p.kind == "cycle" and p.shape is not None}
    kinds: dict[str, set[str | None]] = {}
    for p in pending:
        if p.kind != "cycle":
            kinds.setdefault(p.kind, set()).add(p.shape)
    return shapes, kinds


def measure_for(store_root: str | Path, pending: list[Pending], runtime) -> Measured:
    """`measure` what `pending` needs, on the device and thread count `runtime` asks for."""
    device = wanted_device(getattr(runtime, "device", None))
    return measure(store_root, *_wanted(pending), device=device, threads=getattr(runtime, "threads", None))


def done_fraction(work: dict | None) -> float:
    """The share of a resumable step already done, from its work status ({'step': k, 'steps': n})."""
    if not work:
        return 0.0
    step, steps = work.get("step"), work.get("steps")
    if not _is_int(step) or not _is_int(steps) or steps <= 0:
        return 0.0
    return max(0.0, min(1.0, step / steps))


def plan_line(est: dict) -> str:
    """`estimated wall time: ~1 h 12 min for 38 cycles at 7,450 tok/s measured on cpu (1 worker; …)`."""
    workers = est["workers"]
    if est.get("workers_from") == "runtime.jobs":
        how = f"{count(workers, 'worker')}, runtime.jobs"
    else:
        how = "1 worker; --jobs N divides the training part"
    what = f"{count(est['cycles_estimated'], 'cycle')} at {_throughput_text(est['throughput'])}"
    if est["measured_kinds"]:
        what += f", plus {count(sum(est['measured_kinds'].values()), 'other step')} at measured wall times"
    extra = []
    if est["unmeasured_kinds"]:
        left = ", ".join(f"{n} {k}" for k, n in sorted(est["unmeasured_kinds"].items()))
        extra.append(f"left out, not measured yet: {left}")
    if est["cycles_unmeasured"]:
        extra.append(f"left out: {count(est['cycles_unmeasured'], 'cycle')} of a model shape not measured yet")
    tail = f"; {'; '.join(extra)}" if extra else ""
    return f"estimated wall time: ~{human_duration(est['eta_s'])} for {what} ({how}){tail}"
