"""`hepc status`: what a store is doing right now. Read-only: nothing is written, moved or created.

    leases/<key>            who runs which step (hepc.store.lease): live, stale (holder gone) or suspect
    work/<key>/live.json    the step's own progress, rewritten whole by the executor every ~2 s:
                            {key, kind, name, worker, host, pid, started, t, step, steps, loss, ce, kd, tokens_per_s}

`collect` gathers a status dict (also the `--json` output); `render_lines` turns it into text.
With a compiled spec, it adds the graph's progress (committed / total steps by kind, which of its
steps are leased now) and an estimate of the time left (hepc.observe.measure and .estimate: measured throughput of
committed cycles of the same model shape and device, in-flight steps by their own progress,
divided across the live workers).

Everything read from the store may be junk (a partial, huge or hostile file): it is read with a
bound through hepc.store.safe_io, checked field by field, and shown escaped; never a traceback.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from hepc.errors import StoreError, printable
from hepc.observe.estimate import done_fraction as resumed
from hepc.observe.estimate import estimate, human_duration, measure_for, pending_steps
from hepc.store import lease as store_lease
from hepc.store.layout import MARKER
from hepc.store.objects import Store
from hepc.store.safe_io import TooLarge, read_json
from hepc.wording import count

LIVE = "live.json"
LIVE_LIMIT = 64 << 10  # a live.json is a few hundred bytes
WORK_LIMIT = 1 << 20  # progress.json / failed.json


# --------------------------------------------------------------------------- the store


def open_store(root: Path) -> Store:
    """The store at `root` for reading (nothing is created). The rule every command follows: a missing
    or empty folder is a store nothing has run into yet (`hepc run` makes it one: it reads as empty);
    a folder with other content and no marker is not a store."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root}: store path exists and is not a folder")
    store = Store(root)
    if not root.exists() or not any(root.iterdir()):
        return store  # empty: no leases, no objects
    if not (root / MARKER).exists():
        raise StoreError(f"{root}: not an hepc store (no {MARKER}); point --store (or $HEPC_STORE) at a store")
    store.require_store()  # an unreadable marker, or a newer store format
    return store


# --------------------------------------------------------------------------- live progress


def _str(x) -> str | None:
    return x if isinstance(x, str) else None


def _int(x) -> int | None:
    """An int of a plausible size (a huge one from a foreign file would overflow float arithmetic)."""
    return x if isinstance(x, int) and not isinstance(x, bool) and abs(x) < 2**53 else None


def _float(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, int) and abs(x) >= 2**53):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def read_live(path: Path) -> tuple[dict | None, str | None]:
    """(progress, None), or (None, why not): absent, unreadable, too large, not an object.

    Fields of the wrong type read as None; a loss that is not finite is None with `loss_text` ('nan')."""
    try:
        value = read_json(path, LIVE_LIMIT)
    except FileNotFoundError:
        return None, "no live progress (yet)"
    except OSError as e:
        return None, f"live progress unreadable ({e.strerror or type(e).__name__})"
    except TooLarge:
        return None, f"live progress unreadable (larger than {LIVE_LIMIT:,} bytes)"
    except ValueError:
        return None, "live progress unreadable (not JSON: a partial or foreign file)"
    if not isinstance(value, dict):
        return None, "live progress unreadable (not a JSON object)"
    live = {k: _str(value.get(k)) for k in ("key", "kind", "name", "worker", "host")}
    live.update({k: _int(value.get(k)) for k in ("pid", "step", "steps")})
    live.update({k: _float(value.get(k)) for k in ("started", "t", "loss", "ce", "kd", "tokens_per_s")})
    loss = value.get("loss")
    if live["loss"] is None and isinstance(loss, float) and not math.isfinite(loss):
        live["loss_text"] = str(loss)
    if live["t"] is None:
        try:
            live["t"] = os.stat(path).st_mtime
        except OSError:
            pass
    return live, None


def step_eta_s(live: dict, now: float, tokens_per_step: float | None = None) -> float | None:
    """Seconds left in a running step, from its own progress: (steps - step) / its rate, less the time
    since that update. The rate: tokens_per_s / tokens per step when both are known (the recent rate),
    else steps done / seconds since this attempt started."""
    step, steps, t = live.get("step"), live.get("steps"), live.get("t")
    if step is None or steps is None or steps <= 0 or t is None:
        return None
    left = max(0, steps - step)
    if left == 0:
        return 0.0
    rate = None  # steps per second
    tps = live.get("tokens_per_s")
    if tps and tps > 0 and tokens_per_step:
        rate = tps / tokens_per_step
    elif step > 0 and live.get("started") is not None and t > live["started"]:
        rate = step / (t - live["started"])
    if not rate:
        return None
    eta = left / rate - max(0.0, now - t)
    return max(0.0, eta) if math.isfinite(eta) else None


# --------------------------------------------------------------------------- leases


def _state(info: dict, now: float) -> str:
    if "_junk" in info:
        return "stale" if store_lease.is_stale(info, now=now) else "unreadable"
    if store_lease.is_suspect(info, now=now):
        return "suspect"
    return "stale" if store_lease.is_stale(info, now=now) else "live"


def _label(label, key: str) -> tuple[str | None, str | None]:
    """'cycle t1-c001-abcdef123456' (a lease's `step`) → ('cycle', 't1-c001')."""
    if not isinstance(label, str) or not label.strip():
        return None, None
    kind, _, rest = label.strip().partition(" ")
    rest = rest.strip().removesuffix(f"-{key[:12]}")
    return kind or None, rest or None


def _is_link_or_odd(path: Path) -> bool:
    return path.is_symlink() or (path.exists() and not path.is_dir())


def leases(store: Store, now: float, notes: list[str]) -> list[dict]:
    """Every lease in the store (dot-files skipped: private, tombstone and take-over files)."""
    folder = store.root / "leases"
    if _is_link_or_odd(folder):
        notes.append(f"{folder} is not a real folder; leases not shown")
        return []
    try:
        with os.scandir(folder) as it:
            names = sorted(e.name for e in it if not e.name.startswith("."))
    except FileNotFoundError:
        return []
    except OSError as e:
        notes.append(f"{folder}: {printable(e.strerror or type(e).__name__)}; leases not shown")
        return []
    work_ok = not _is_link_or_odd(store.root / "work")
    out = []
    for key in names:
        info = store_lease.read_lease(folder / key)
        if info is None:
            continue  # released meanwhile
        kind, name = _label(info.get("step"), key)
        work = store.root / "work" / key
        if not work_ok:
            live, problem = None, "the store's work folder is not a real folder; not read"
        elif work.is_symlink():
            live, problem = None, "work folder is a symbolic link; not read"
        else:
            live, problem = read_live(work / LIVE)
        if live is not None and live.get("key") not in (None, key):
            live, problem = None, "live progress names another step; ignored"
        if live is not None:
            kind, name = live.get("kind") or kind, live.get("name") or name
        mtime = info.get("_mtime")
        entry = {
            "key": key,
            "kind": kind,
            "name": name,
            "state": _state(info, now),
            "host": _str(info.get("host")),
            "pid": _int(info.get("pid")),
            "worker": _str(info.get("worker")) or (live or {}).get("worker"),
            "started": _float(info.get("started")),
            "heartbeat_age_s": round(now - mtime, 1) if _float(mtime) else None,
            "holder": store_lease.describe(info, now),
            "live": live,
            "live_problem": problem,
            "update_age_s": round(now - live["t"], 1) if live and live.get("t") is not None else None,
            "step_eta_s": None,
        }
        if live is not None and entry["state"] == "live":
            entry["step_eta_s"] = _round(step_eta_s(live, now))
        out.append(entry)
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


# --------------------------------------------------------------------------- the graph


def graph_progress(store: Store, compiled, held: list[dict], now: float) -> tuple[dict, list]:
    """Committed / total by kind, the graph's leased steps, and what is left as hepc.observe.estimate.Pending."""
    by_key = {entry["key"]: entry for entry in held}
    kinds: dict[str, dict] = {}
    leased, todo, done_fraction, remaining = [], [], {}, {}
    for step in compiled.graph.order():
        c = kinds.setdefault(step.kind, {"total": 0, "committed": 0, "leased": 0, "resumable": 0, "failed": 0})
        c["total"] += 1
        if store.find(step) is not None:
            c["committed"] += 1
            continue
        todo.append(step)
        entry = by_key.get(step.key)
        if entry is not None:
            c["leased"] += 1
            entry["kind"], entry["name"], entry["in_graph"] = step.kind, step.name, True
            leased.append({"key": step.key, "kind": step.kind, "name": step.name, "state": entry["state"]})
            live = entry["live"]
            if live is not None and entry["state"] == "live":
                steps = step.context.get("steps")
                per_step = step.context.get("tokens") / steps if step.kind == "cycle" and steps else None
                entry["step_eta_s"] = _round(step_eta_s(live, now, per_step))
                if entry["step_eta_s"] is not None:
                    remaining[step.key] = entry["step_eta_s"]
        work = _work_status(store, step.key)
        if work and work.get("state") == "resumable":
            c["resumable"] += 1
            done_fraction[step.key] = resumed(work)
        elif work and work.get("state") == "failed":
            c["failed"] += 1
    total = sum(c["total"] for c in kinds.values())
    committed = sum(c["committed"] for c in kinds.values())
    graph = {
        "spec": compiled.spec.name,
        "total": total,
        "committed": committed,
        "complete": committed == total,
        "by_kind": kinds,
        "leased": leased,
    }
    return graph, pending_steps(compiled.graph, todo, done_fraction, remaining)


def _work_status(store: Store, key: str) -> dict | None:
    work = store.root / "work" / key
    if work.is_symlink() or _is_link_or_odd(store.root / "work"):
        return None
    try:
        return store.work_status(key)
    except (OSError, StoreError):
        return None


# --------------------------------------------------------------------------- collect and render


def collect(store: Store, compiled=None, runtime=None, now: float | None = None) -> dict:
    """The status of `store` (and of `compiled`'s graph in it), as plain data."""
    now = time.time() if now is None else now
    notes: list[str] = []
    held = leases(store, now, notes)
    for entry in held:
        entry.setdefault("in_graph", False)
    live_holders = {(e["host"], e["pid"], e["worker"]) for e in held if e["state"] == "live"}
    out = {
        "store": str(store.root),
        "time": now,
        "leases": held,
        "live_workers": len(live_holders),
        "graph": None,
        "eta_s": None,
        "eta": None,
        "notes": notes,
    }
    if compiled is not None:
        graph, pending = graph_progress(store, compiled, held, now)
        measured = measure_for(store.root, pending, runtime)
        est = estimate(pending, measured, workers=max(1, len(live_holders)))
        out["graph"], out["eta"], out["eta_s"] = graph, est, est["eta_s"]
    return out


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "at an unknown time"
    if seconds < -1:
        return f"{human_duration(-seconds)} in the future"
    return f"{human_duration(seconds)} ago"


def _live_line(entry: dict) -> str:
    live = entry["live"]
    if live is None:
        return printable(entry["live_problem"] or "no live progress")
    parts = []
    if live.get("step") is not None:
        parts.append(f"step {live['step']:,}/{live['steps']:,}" if live.get("steps") else f"step {live['step']:,}")
    if live.get("ce") is not None and live.get("kd") is not None:  # distilling: CE is what val measures
        parts.append(f"ce {live['ce']:.4f} · kd {live['kd']:.4f}")
    elif live.get("loss") is not None:
        parts.append(f"loss {live['loss']:.4f}")
    elif live.get("loss_text"):
        parts.append(f"loss {live['loss_text']}")
    if live.get("tokens_per_s") is not None:
        parts.append(f"{live['tokens_per_s']:,.0f} tok/s")
    if entry["step_eta_s"] is not None:
        parts.append(f"step ETA ~{human_duration(entry['step_eta_s'])}")
    if not parts:
        parts.append("starting")
    return ", ".join(parts) + f" (updated {_ago(entry['update_age_s'])})"


_STATE_NOTES = {
    "stale": "holder gone; the next `hepc run` takes it over",
    "suspect": "heartbeat in the future; if no hepc process holds it, clear it with `hepc unlock {key}`",
    "unreadable": "not a lease (yet?); hepc writes leases whole",
}


def render_lines(st: dict, *, stamp: bool = False) -> list[str]:
    """The status as text lines (everything read from the store shown escaped)."""
    held = st["leases"]
    head = f"store {printable(st['store'])}"
    if stamp:
        head += f" at {time.strftime('%H:%M:%S', time.localtime(st['time']))}"
    lines = []
    if not held:
        lines.append(f"{head}: no step is running (no leases)")
    else:
        counts: dict[str, int] = {}
        for e in held:
            counts[e["state"]] = counts.get(e["state"], 0) + 1
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        lines.append(f"{head}: {count(len(held), 'lease')} ({states})")
    width = max((len(printable(f"{e['kind'] or '?'} {e['name'] or e['key'][:12]}")) for e in held), default=0)
    for e in held:
        what = printable(f"{e['kind'] or '?'} {e['name'] or e['key'][:12]}")
        worker = f" (worker {printable(e['worker'])})" if e["worker"] else ""
        line = f"  {what:<{width}}  {e['state']:<8} {printable(e['holder'])}{worker}"
        if e["state"] in _STATE_NOTES:
            line += f": {_STATE_NOTES[e['state']].format(key=e['key'][:12])}"
        lines.append(line)
        lines.append(f"  {'':<{width}}  {_live_line(e)}")
    graph = st["graph"]
    if graph is not None:
        parts = []
        for kind, c in graph["by_kind"].items():
            extra = [f"{c[k]} {k}" for k in ("leased", "resumable", "failed") if c[k]]
            parts.append(f"{kind} {c['committed']}/{c['total']}" + (f" ({', '.join(extra)})" if extra else ""))
        lines.append(f"spec {printable(graph['spec'])}: {graph['committed']}/{graph['total']} steps committed "
                     f"({', '.join(parts)})")  # fmt: skip
        if graph["leased"]:
            now_leased = ", ".join(f"{x['kind']} {x['name']} ({x['state']})" for x in graph["leased"])
            lines.append(f"  leased now: {now_leased}")
        lines.append(eta_line(st))
    for note in st["notes"]:
        lines.append(f"note: {printable(note)}")
    return lines


def eta_line(st: dict) -> str:
    est, graph = st["eta"], st["graph"]
    if graph["complete"]:
        return "ETA: done (every step of the graph is committed)"
    if est["eta_s"] is None:
        return f"ETA: unknown: {est['basis']}"
    live = st["live_workers"]
    if live:
        workers = f"divided across {count(live, 'live worker')}"
    else:
        workers = "for 1 worker (no live worker right now)"
    bound = " at least" if est["partial"] else ""
    return f"ETA{bound} ~{human_duration(est['eta_s'])} ({est['basis']}; {workers})"
