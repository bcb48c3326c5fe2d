"""Wall-time estimates of the work still to do (read-only, no torch), from hepc.observe.measure's rates.

The estimate of the remaining work: seconds of every step still to run (in-flight steps: what their
own live progress says is left), divided across the workers, but never less than the longest
trajectory's chain of cycles (a trajectory's cycles run one after another) nor the longest step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hepc.observe.measure import SHAPED_KINDS, Measured, Rate, is_int, measure, shape_of, wanted_device
from hepc.wording import count

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
    from hepc.store.objects import Store

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
    if not is_int(step) or not is_int(steps) or steps <= 0:
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
