"""Peak memory per device of a training cycle and of a scoring step, by arithmetic: no torch.

`hepc plan` prints these estimates, `validate` and `run` refuse a configuration that cannot fit, and a
cycle chooses its micro-batch with them (`runtime.micro_batch: auto`). The parts of a training step:

    weights          float32 master weights                                 4·N
    gradients        float32, one per weight (DDP: the buckets are the gradients) 4·N
    optimizer        AdamW: two moments, 8 bytes per weight; Muon: one momentum for the hidden matrices
                     (4 bytes), AdamW for the rest
    teacher          the frozen predecessor of a distilled cycle: float32, or bfloat16 on CUDA with bf16
    bf16 copies      bf16 autocast keeps a bfloat16 copy of every matrix it multiplies for backward: 2 bytes
                     per block and head weight
    activations      what autograd saves for backward, per token of the micro-batch and per layer (below);
                     with activation checkpointing only each block's input, plus one block recomputed
    loss             the output logits and the loss's full-vocabulary tensors, per token (or per token of
                     one chunk when the loss is chunked: runtime.loss_chunk_tokens)
    checkpoint copy  on the CPU, with mid-cycle checkpoints: the host copy of the weights and optimizer
                     state that the background writer writes (on CUDA it is pinned host memory, not the GPU's)

Saved activations per token and layer, with d = d_model, h = the SwiGLU width (hepc.sizes), nh = heads,
counted tensor by tensor with autograd's saved-tensor hooks (docs/benchmarks.md): float32 4·(12·d + 4·h)
bytes (the block input, both normed inputs, q/k/v, q and k before and after their norms, the attention
output, the residual after attention, the MLP's input and output projections' inputs); under bf16 autocast
32·d + 8·h (the residual stream stays float32, the matmul inputs are bf16, the q/k norms run in float32);
dropout masks add 8·d bytes on the CPU (float masks) and 2·d on CUDA (bool masks). Measured against the
process's peak memory on the CPU for small shapes (tests/test_memory.py, bench/memory.py).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from hepc.sizes import param_count, swiglu_hidden

GB = 1e9  # sizes are printed and configured in GB (10⁹ bytes), as GPU memory is sold
ASSUMED_GPU_GB = 80.0  # a CUDA spec planned where no GPU is visible: an 80 GB device (H100 / A100 80GB)
USABLE = {"cuda": 0.90, "cpu": 0.80}  # of the capacity: allocator fragmentation, CUDA context, NCCL, others
DEFAULT_CHUNK_TOKENS = {"cuda": 2048, "cpu": 0}  # runtime.loss_chunk_tokens: null; 0 = full logits
SCORE_WINDOWS = {"cuda": 64, "cpu": 16}  # windows per scoring forward (hepc.train.score)
# Loss tensors, bytes per token and vocabulary entry, measured at their peak (start of backward) on the
# CPU (float32: logits, log-softmax and their gradients; distillation adds the teacher's logits and the
# KL terms); bf16 adds the bfloat16 logits before their float32 copy.
LOSS_BYTES_PER_VOCAB = {"ce": 12.0, "kd": 32.0}
CHUNK_BYTES_PER_VOCAB = {"ce": 13.0, "kd": 28.0}
SCORE_BYTES_PER_VOCAB = 12.0  # logits, their float32 copy and the softmax or log-softmax


@dataclass(frozen=True)
class Shape:
    """What decides a cycle's memory besides the batch (all from the spec; hashed or runtime alike)."""

    vocab: int
    n_layer: int
    d_model: int
    n_head: int
    seq_len: int
    dropout: bool = False
    optimizer: str = "adamw"
    distill: bool = False

    @property
    def params(self) -> int:
        return param_count(self.vocab, self.n_layer, self.d_model)

    @property
    def block_params(self) -> int:
        return self.params - 2 * self.vocab * self.d_model

    @property
    def hidden(self) -> int:
        return swiglu_hidden(self.d_model)


@dataclass(frozen=True)
class Settings:
    """How a cycle runs (runtime, never in a key)."""

    device: str = "cpu"  # cpu | cuda
    bf16: bool = False  # bf16 autocast (CUDA with runtime.dtype bfloat16)
    micro: int = 1  # sequences per forward and backward on one device
    checkpointing: bool = False  # activation checkpointing per block
    chunk_tokens: int = 0  # loss in chunks of this many tokens (0: full logits)
    snapshots: bool = False  # mid-cycle checkpoints (their host copy counts on the CPU)


@dataclass
class Estimate:
    """Bytes by part; `total` is their sum (the estimated peak)."""

    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        """'weights 6.9 GB + gradients 6.9 GB + ...' (the parts of at least 1 % of the total)."""
        total = self.total
        shown = [f"{name} {human(v)}" for name, v in self.parts.items() if v > 0 and v >= 0.01 * total]
        return " + ".join(shown)


def human(value: float) -> str:
    """Bytes as GB, MB or KB (10⁹, 10⁶, 10³), one decimal."""
    for unit, scale in (("GB", GB), ("MB", 1e6)):
        if value >= 0.95 * scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value / 1e3:.1f} KB"


def activation_bytes_per_token_layer(shape: Shape, device: str, bf16: bool) -> float:
    """What one block saves for backward, per token (module docstring)."""
    d, h, nh = shape.d_model, shape.hidden, shape.n_head
    small = 4.0 * (2 + 3 * nh)  # the norms' reciprocal RMS (x twice, q and k per head), attention's logsumexp
    saved = (32.0 * d + 8.0 * h) if bf16 else 4.0 * (12 * d + 4 * h)
    masks = (2.0 if device == "cuda" else 8.0) * d if shape.dropout else 0.0
    return saved + small + masks


def static_bytes(shape: Shape, settings: Settings) -> dict[str, float]:
    """Weights, gradients, optimizer state, teacher and bf16 weight copies: what does not scale with the batch."""
    n = shape.params
    hidden = shape.block_params
    parts = {"weights": 4.0 * n, "gradients": 4.0 * n}
    parts["optimizer"] = 4.0 * hidden + 8.0 * (n - hidden) if shape.optimizer == "muon" else 8.0 * n
    if shape.distill:
        parts["teacher"] = (2.0 if settings.device == "cuda" and settings.bf16 else 4.0) * n
    if settings.bf16:  # autocast's bfloat16 copies of the matrices (the embedding is a lookup, not a matmul)
        parts["bf16 copies"] = 2.0 * (hidden + shape.vocab * shape.d_model)
    if settings.snapshots and settings.device == "cpu":
        parts["checkpoint copy"] = parts["weights"] + parts["optimizer"]
    return parts


def activation_bytes(shape: Shape, settings: Settings, tokens: int) -> float:
    """Saved activations of one micro-batch of `tokens` tokens, the output head's input included."""
    per_layer = activation_bytes_per_token_layer(shape, settings.device, settings.bf16)
    d = shape.d_model
    outside = 8.0 + 4.0 * d + (2.0 if settings.bf16 else 4.0) * d  # token ids; final norm's input; head's input
    if settings.checkpointing:  # each block's input (the float32 residual), and one block recomputed at a time
        return tokens * (shape.n_layer * 4.0 * d + per_layer + outside)
    return tokens * (shape.n_layer * per_layer + outside)


def loss_bytes(shape: Shape, settings: Settings, tokens: int) -> float:
    """The logits and the loss's vocabulary-wide tensors at their peak, for one micro-batch."""
    kind = "kd" if shape.distill else "ce"
    extra = 2.0 if settings.bf16 else 0.0
    if settings.chunk_tokens and settings.chunk_tokens < tokens:
        per_token, tokens = CHUNK_BYTES_PER_VOCAB[kind] + extra, settings.chunk_tokens
    else:
        per_token = (CHUNK_BYTES_PER_VOCAB if settings.chunk_tokens else LOSS_BYTES_PER_VOCAB)[kind] + extra
    teacher_hidden = tokens * shape.d_model * (2.0 if settings.bf16 else 4.0) if shape.distill else 0.0
    return tokens * shape.vocab * per_token + teacher_hidden


def cycle_estimate(shape: Shape, settings: Settings) -> Estimate:
    """Estimated peak memory of one device training a cycle with `settings`."""
    tokens = settings.micro * shape.seq_len
    parts = static_bytes(shape, settings)
    parts["activations"] = activation_bytes(shape, settings, tokens)
    parts["loss"] = loss_bytes(shape, settings, tokens)
    return Estimate(parts)


def score_estimate(shape: Shape, settings: Settings, windows: int | None = None) -> Estimate:
    """Estimated peak memory of scoring one snapshot (inference: no gradients, nothing saved)."""
    windows = windows or SCORE_WINDOWS[settings.device]
    tokens = windows * shape.seq_len
    d, h = shape.d_model, shape.hidden
    width = 2.0 if settings.bf16 else 4.0
    chunk = settings.chunk_tokens if settings.chunk_tokens else tokens
    return Estimate({
        "weights": 4.0 * shape.params,
        "activations": tokens * (4.0 * d + width * (2 * d + 6 * h)),  # the residual and one block's widest moment
        "logits": min(chunk, tokens) * shape.vocab * (SCORE_BYTES_PER_VOCAB + (2.0 if settings.bf16 else 0.0)),
    })  # fmt: skip


@dataclass(frozen=True)
class Choice:
    """A cycle's micro-batch and activation checkpointing, and whether that fits."""

    micro: int
    checkpointing: bool
    estimate: Estimate
    fits: bool
    rows: int  # sequences per device per optimizer step

    @property
    def micro_steps(self) -> int:
        return -(-self.rows // self.micro)


def divisors(n: int) -> list[int]:
    """The divisors of n ≥ 1, ascending (√n trial divisions: fast for any batch a spec allows)."""
    small = [m for m in range(1, math.isqrt(n) + 1) if n % m == 0]
    return sorted(set(small) | {n // m for m in small})


def choose(
    shape: Shape,
    rows: int,
    usable: float,
    *,
    device: str,
    bf16: bool,
    micro: int | str = "auto",
    checkpointing: bool | str = "auto",
    chunk_tokens: int | None = None,
    snapshots: bool = False,
) -> Choice:
    """The micro-batch (sequences per forward on one device) and activation checkpointing for `rows`
    sequences per device and step, within `usable` bytes.

    micro "auto": the largest divisor of `rows` that fits (equal micro-batches: one compiled shape),
    trying without activation checkpointing first unless it is forced on; checkpointing "auto": on only
    when not even one sequence fits without it. An explicit micro-batch is taken as given (capped at
    `rows`); `fits` says whether its estimate is within `usable`.
    """
    chunk = DEFAULT_CHUNK_TOKENS[device] if chunk_tokens is None else int(chunk_tokens)
    modes = [False, True] if checkpointing == "auto" else [bool(checkpointing)]

    def estimate(m: int, ckpt: bool) -> Estimate:
        return cycle_estimate(shape, Settings(device, bf16, m, ckpt, chunk, snapshots))

    if micro != "auto":
        m = max(1, min(int(micro), rows))
        for ckpt in modes:
            est = estimate(m, ckpt)
            if est.total <= usable:
                return Choice(m, ckpt, est, True, rows)
        return Choice(m, modes[-1], est, False, rows)
    candidates = divisors(rows)
    for ckpt in modes:  # the estimate grows with the micro-batch: bisect for the largest divisor that fits
        lo, hi = 0, len(candidates)  # candidates[:lo] fit, candidates[hi:] do not
        while lo < hi:
            mid = (lo + hi) // 2
            if estimate(candidates[mid], ckpt).total <= usable:
                lo = mid + 1
            else:
                hi = mid
        if lo:
            m = candidates[lo - 1]
            return Choice(m, ckpt, estimate(m, ckpt), True, rows)
    return Choice(1, modes[-1], estimate(1, modes[-1]), False, rows)


# --------------------------------------------------------------------------- the device's memory


@dataclass(frozen=True)
class Capacity:
    """One device's memory and where the figure comes from."""

    device: str  # cpu | cuda
    bytes: float
    source: str  # runtime.device_memory_gb, nvidia-smi, torch, physical memory, assumed

    @property
    def usable(self) -> float:
        return USABLE[self.device] * self.bytes

    def describe(self) -> str:
        what = "GPU" if self.device == "cuda" else "CPU memory"
        note = {
            "assumed": " (assumed: no GPU visible here; set runtime.device_memory_gb)",
            "runtime.device_memory_gb": " (runtime.device_memory_gb)",
        }.get(self.source, f" ({self.source})")
        return f"{human(self.bytes)} {what}{note}, {human(self.usable)} usable"


def physical_memory() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def nvidia_smi_memory() -> float | None:
    """The smallest memory of the GPUs nvidia-smi lists (CUDA_VISIBLE_DEVICES narrows them), or None.
    Without torch: `hepc plan` and `validate` stay torch-free."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    command = [exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [x.strip() for x in visible.split(",") if x.strip()]
        if not ids or ids[0].startswith("-"):
            return None
        command.append(f"--id={','.join(ids)}")
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    values = [float(x) for x in out.stdout.split() if x.replace(".", "", 1).isdigit()] if out.returncode == 0 else []
    return min(values) * 2**20 if values else None  # MiB


def planning_capacity(runtime: dict) -> Capacity:
    """The device a spec's runtime plans for, without torch: runtime.device_memory_gb when given, else the
    GPUs nvidia-smi sees (device cuda or auto), else this machine's memory shared by the step's ranks (cpu,
    or auto without GPUs). A cuda spec where no GPU is visible is planned for an 80 GB GPU, said as assumed."""
    device = runtime.get("device") or "auto"
    given = runtime.get("device_memory_gb")
    gpu = nvidia_smi_memory() if device == "auto" or (device == "cuda" and given is None) else None
    kind = "cuda" if device == "cuda" or (device == "auto" and gpu is not None) else "cpu"
    if given is not None:
        return Capacity(kind, float(given) * GB, "runtime.device_memory_gb")
    if kind == "cuda":
        return Capacity(kind, gpu, "nvidia-smi") if gpu is not None else Capacity(kind, ASSUMED_GPU_GB * GB, "assumed")
    ranks = max(1, int(runtime.get("gpus_per_step") or 1))
    ram = physical_memory() or 8 * GB
    return Capacity("cpu", ram / ranks, "physical memory" if ranks == 1 else f"physical memory / {ranks} ranks")


# --------------------------------------------------------------------------- a spec's steps


def spec_shape(spec, vocab: int, distill: bool) -> Shape:
    m, o = spec.model, spec.optimizer
    return Shape(vocab, m.n_layer, m.d_model, m.n_head, spec.data.seq_len, m.dropout > 0, o.kind, distill)


def spec_choice(spec, vocab: int, distill: bool, capacity: Capacity) -> Choice:
    """The micro-batch a cycle of `spec` gets on `capacity` (distilled or not), as the training loop chooses it."""
    rt = spec.runtime
    rows = max(1, spec.optimizer.batch_tokens // spec.data.seq_len // max(1, rt.gpus_per_step))
    bf16 = capacity.device == "cuda" and rt.dtype == "bfloat16"
    return choose(spec_shape(spec, vocab, distill), rows, capacity.usable, device=capacity.device, bf16=bf16,
                  micro=rt.micro_batch, checkpointing=rt.activation_checkpointing,
                  chunk_tokens=rt.loss_chunk_tokens, snapshots=_snapshots(rt))  # fmt: skip


def _snapshots(rt) -> bool:
    """Whether a cycle writes mid-cycle checkpoints (runtime settings of a spec)."""
    return bool(rt.checkpoint_every_steps or rt.checkpoint_every_minutes)


def memory_report(compiled) -> dict:
    """Per step kind of every population of `compiled`: the estimated peak per device (JSON-ready), and the
    problems of cycles that cannot fit: [(dotted field to change, message)]."""
    from hepc.compile.compiler import vocab_size

    spec = compiled.spec
    capacity = planning_capacity(spec.runtime.model_dump())
    rows, problems, seen = [], [], set()
    for pop in compiled.populations:
        s = pop.spec
        vocab = vocab_size(s)
        failing: list = []
        kinds = [("cycle", False)]
        if s.population.distill is not None and s.population.distill.alpha > 0 and s.population.cycles > s.population.distill.after_cycles:
            kinds.append(("cycle", True))
        for kind, distill in kinds:
            choice = spec_choice(s, vocab, distill, capacity)
            key = (pop.label if len(compiled.populations) > 1 else "", kind, distill, choice.micro, choice.checkpointing,
                   round(choice.estimate.total))
            if key in seen:
                continue
            seen.add(key)
            shape = spec_shape(s, vocab, distill)
            per_sequence = activation_bytes(shape, _settings(s, capacity, 1, False), s.data.seq_len)
            per_sequence_ckpt = activation_bytes(shape, _settings(s, capacity, 1, True), s.data.seq_len)
            rows.append({
                "population": pop.label, "kind": "cycle (distilled)" if distill else "cycle", "fits": choice.fits,
                "micro_batch": choice.micro, "rows": choice.rows, "micro_steps": choice.micro_steps,
                "activation_checkpointing": choice.checkpointing, "total_bytes": choice.estimate.total,
                "parts": choice.estimate.parts, "activations_per_sequence": per_sequence,
                "activations_per_sequence_checkpointed": per_sequence_ckpt,
            })  # fmt: skip
            if not choice.fits:
                failing.append((choice.estimate.total, s, choice, distill))
        if failing:  # one problem per population: its largest cycle (a distilled one needs the most)
            _, worst_spec, worst, distilled = max(failing, key=lambda f: f[0])
            problem = _problem(worst_spec, worst, capacity, distilled)
            if problem not in problems:
                problems.append(problem)
        score = score_estimate(spec_shape(s, vocab, False), _settings(s, capacity, 1, False))
        key = (pop.label if len(compiled.populations) > 1 else "", "score", round(score.total))
        if key not in seen:
            seen.add(key)
            rows.append({"population": pop.label, "kind": "score", "fits": score.total <= capacity.usable,
                         "total_bytes": score.total, "parts": score.parts})  # fmt: skip
    return {
        "device": capacity.device, "capacity_bytes": capacity.bytes, "usable_bytes": capacity.usable,
        "source": capacity.source, "gpus_per_step": spec.runtime.gpus_per_step, "steps": rows, "problems": problems,
    }  # fmt: skip


def _settings(spec, capacity: Capacity, micro: int, checkpointing: bool) -> Settings:
    rt = spec.runtime
    chunk = DEFAULT_CHUNK_TOKENS[capacity.device] if rt.loss_chunk_tokens is None else rt.loss_chunk_tokens
    return Settings(capacity.device, capacity.device == "cuda" and rt.dtype == "bfloat16", micro, checkpointing, chunk,
                    _snapshots(rt))


def _problem(spec, choice: Choice, capacity: Capacity, distill: bool) -> tuple[str, str]:
    """(field to change, message) for a cycle that cannot fit."""
    what = "a distilled cycle" if distill else "a cycle"
    need = f"{human(choice.estimate.total)} per device ({choice.estimate.describe()})"
    room = f"more than the {human(capacity.usable)} usable of {capacity.describe().split(',')[0]}"
    rt = spec.runtime
    if rt.micro_batch != "auto":
        best = choose(spec_shape(spec, _vocab(spec), distill), choice.rows, capacity.usable,
                      device=capacity.device, bf16=capacity.device == "cuda" and rt.dtype == "bfloat16",
                      checkpointing=rt.activation_checkpointing, chunk_tokens=rt.loss_chunk_tokens,
                      snapshots=_snapshots(rt))  # fmt: skip
        if best.fits:
            hint = f"use runtime.micro_batch: {best.micro} or less (or auto)"
            if best.checkpointing and rt.activation_checkpointing != "auto":
                hint += " with activation checkpointing"
            return "runtime.micro_batch", f"{what} with micro-batches of {choice.micro} sequences needs {need}, {room}; {hint}"
    hint = ("a smaller model or a device with more memory (runtime.device_memory_gb): data parallelism "
            "(gpus_per_step) keeps a whole copy of the model, its gradients and optimizer state on every device")
    with_ckpt = choose(spec_shape(spec, _vocab(spec), distill), choice.rows, capacity.usable, device=capacity.device,
                       bf16=capacity.device == "cuda" and rt.dtype == "bfloat16", checkpointing=True,
                       chunk_tokens=rt.loss_chunk_tokens, snapshots=_snapshots(rt))  # fmt: skip
    if rt.activation_checkpointing is False and with_ckpt.fits:
        return "runtime.activation_checkpointing", f"{what} needs {need} even with one sequence per micro-batch, {room}; set runtime.activation_checkpointing: auto (or true)"
    if rt.dtype != "bfloat16" and capacity.device == "cuda":
        hint = "runtime.dtype: bfloat16, or " + hint
    return "model", f"{what} needs {need} even with one sequence per micro-batch, {room}; {hint}"


def _vocab(spec) -> int:
    from hepc.compile.compiler import vocab_size

    return vocab_size(spec)


def report_lines(report: dict) -> list[str]:
    """The plan's lines: the device, then one line per step kind (and population, with a sweep)."""
    capacity = Capacity(report["device"], report["capacity_bytes"], report["source"])
    lines = [f"memory per device: {capacity.describe()}, gpus_per_step {report['gpus_per_step']}"]
    width = max(len(r["kind"]) for r in report["steps"]) if report["steps"] else 0
    for r in report["steps"]:
        label = f"{r['population']}: {r['kind']}" if r["population"] else r["kind"]
        est = Estimate(r["parts"])
        verdict = "" if r["fits"] else "  DOES NOT FIT"
        if r["kind"] == "score":
            lines.append(f"  {label:<{width}}  {human(r['total_bytes'])} = {est.describe()}{verdict}")
            continue
        from hepc.wording import count

        micro = (f"micro-batch {r['micro_batch']} of {count(r['rows'], 'sequence')} "
                 f"({count(r['micro_steps'], 'micro-step')})")  # fmt: skip
        if r["activation_checkpointing"]:
            micro += ", activation checkpointing"
        per_seq = (f"activations {human(r['activations_per_sequence'])} per sequence, "
                   f"{human(r['activations_per_sequence_checkpointed'])} with activation checkpointing")  # fmt: skip
        lines.append(f"  {label:<{width}}  {micro}: {human(r['total_bytes'])} = {est.describe()}; {per_seq}{verdict}")
    return lines
