"""One training cycle of one trajectory: load the predecessor, perturb, train L steps, snapshot.

Reads top to bottom like nanoGPT's train.py: set LR/WD for this step, forward, loss, backward (over the
device's micro-batches, hepc.train.objective), clip, step, log; a checkpoint now and then, written in the
background. Everything that decides the numbers (init, noise, dropout, data position) is seeded from
(trajectory_seed, cycle_index, global step), so a cycle is reproducible on its own and a cycle that
is killed and resumed from work_dir/ckpt.pt ends bit-identical (on CPU) to one that never stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import torch
import xxhash

from hepc.store.ckpt_digest import SIDECAR, file_digest, write_digest
from hepc.train import ddp
from hepc.train.batches import BatchSource, to_device
from hepc.train.checkpoint import (
    BackgroundWriter,
    load_state,
    load_weights,
    save_state,
    save_state_hashed,
    save_weights,
    snapshot,
    write_json,
    write_jsonl,
)
from hepc.train.model import GPT, GPTConfig, precision_context, resolve_device
from hepc.train.objective import Objective, accumulate, teacher_outputs
from hepc.train.optim import KINDS, optimizer_from_params, set_lr_wd
from hepc.train.resume import (
    brief_error,
    check_optimizer_state,
    ckpt_label,
    cycle_fingerprint,
    load_checkpoint,
    remove_path,
    say,
)
from hepc.train.schedule import steps_per_cycle
from hepc.train.setup import (
    CycleInterrupted,
    batch_sequences,
    cycle_seed,
    deferred_interrupts,
    deterministic_mode,
    memory_plan,
    perturb_weights,
    progress_info,
    schedule_multipliers,
    training_tokens,
)

# Salts that give the perturbation noise and the dropout stream independent seeds.
_PERTURB_SALT = 1
_DROPOUT_SALT = 2
# Progress reports: after the first step of an attempt, at every logged step, and at least this often
# between them (so a person sees a rate and an ETA within seconds, whatever log_every_steps is).
REPORT_EVERY_S = 1.0


def train_cycle(
    *,
    model: dict,
    optimizer: dict,
    schedule: dict,
    distill: dict | None,
    perturb_scale: float,
    cycle_index: int,
    trajectory_seed: int,
    epochs_per_cycle: float,
    seq_len: int,
    corpus_dir: Path,
    prev_dir: Path | None,
    out_dir: Path,
    work_dir: Path,
    runtime: dict,
    train_splits: tuple[str, ...] = ("train",),
    progress: Callable[[dict], None] | None = None,
    note: Callable[[str], None] | None = None,
    guard: Callable[[], None] | None = None,
) -> dict:
    """Train cycle `cycle_index` of one trajectory, write its outputs to out_dir, return the summary.

    A checkpoint in work_dir is resumed only if it matches its recorded digest, loads, and belongs to
    this very cycle; any other one is discarded (said through `note`, default stderr) and the cycle
    restarts from its start. `guard()` is called before anything is written to work_dir or out_dir
    (the driver's raises once this process no longer holds the step's lease).

    Data parallel, `runtime["gpus_per_step"]` = N > 1 (hepc.train.ddp): this process is rank 0 and
    starts ranks 1..N-1 (gloo ranks on the CPU, NCCL on cuda:0..N-1). Every rank reads the same global
    batch and trains on its own 1/N of the rows; DDP averages the gradients, so each update equals the
    single-process full-batch update up to fp32 reduction order, and the losses reported are the
    global-batch means (with dropout 0, equal to the single-process ones to fp32 tolerance). Only rank 0
    writes, reports and calls progress/note/guard; a Ctrl-C stops all ranks after the same step. With
    dropout > 0 every rank draws its own masks (rank 0 the single-process stream, rank r one seeded from
    the cycle seed and r): statistically equivalent to one process, not bit-equal. Checkpoints are the
    single-process ones plus every rank's RNG state (ignored by another N), so a cycle can resume with
    any N; with the same N the resume is exact.

    Micro-batches (`runtime["micro_batch"]`, "auto" by default: the largest that fits the device,
    hepc.train.memory): each device's rows run forward and backward a micro-batch at a time and their gradients
    add up to the whole batch's before the one optimizer step; activation checkpointing and the chunked
    loss (`runtime["activation_checkpointing"]`, `runtime["loss_chunk_tokens"]`) change memory, not results.
    """
    corpus_dir, out_dir, work_dir = Path(corpus_dir), Path(out_dir), Path(work_dir)
    prev_dir = Path(prev_dir) if prev_dir is not None else None
    if prev_dir is None and (distill is not None or perturb_scale > 0):
        raise ValueError("distillation and perturbation need the previous cycle (prev_dir)")
    if optimizer.get("kind", "adamw") not in KINDS:
        raise ValueError(f"unknown optimizer kind {optimizer.get('kind')!r} (expected one of {', '.join(KINDS)})")
    cycle = {  # what every rank needs (picklable, for the spawned ones)
        "model": model, "optimizer": optimizer, "schedule": schedule, "distill": distill,
        "perturb_scale": perturb_scale, "cycle_index": cycle_index, "trajectory_seed": trajectory_seed,
        "epochs_per_cycle": epochs_per_cycle, "seq_len": seq_len, "corpus_dir": corpus_dir, "prev_dir": prev_dir,
        "out_dir": out_dir, "work_dir": work_dir, "runtime": runtime, "train_splits": tuple(train_splits),
    }  # fmt: skip
    world = int(runtime.get("gpus_per_step") or 1)
    if world == 1:
        with deterministic_mode(bool(runtime.get("deterministic"))):
            return _run_cycle(**cycle, progress=progress, note=note, guard=guard, dp=None)
    ddp.rows_per_rank(batch_sequences(optimizer, seq_len), world)  # before any process starts
    device = resolve_device(runtime.get("device", "auto"))
    ddp.check_devices(device, world)
    threads = torch.get_num_threads()
    shared = device.type == "cpu" and not runtime.get("threads")
    if shared:  # N CPU ranks share the cores (by default torch would give each of them all of them)
        cycle["runtime"] = {**runtime, "threads": max(1, threads // world)}
    try:
        with deterministic_mode(bool(runtime.get("deterministic"))), ddp.launch(world, device.type, _rank_main, cycle) as rank:
            return _run_cycle(**cycle, progress=progress, note=note, guard=guard, dp=rank)
    finally:
        if shared:
            torch.set_num_threads(threads)  # this process's own default again


def _rank_main(rank: ddp.Rank, cycle: dict) -> None:
    """Ranks 1..N-1 (child processes): the same loop on their slice; nothing written, nothing reported."""
    try:
        with deterministic_mode(bool(cycle["runtime"].get("deterministic"))):
            _run_cycle(**cycle, progress=None, note=None, guard=None, dp=rank)
    except (CycleInterrupted, KeyboardInterrupt):
        pass  # rank 0 stopped after the same step, wrote the checkpoint and reports it


def _run_cycle(
    *,
    model: dict,
    optimizer: dict,
    schedule: dict,
    distill: dict | None,
    perturb_scale: float,
    cycle_index: int,
    trajectory_seed: int,
    epochs_per_cycle: float,
    seq_len: int,
    corpus_dir: Path,
    prev_dir: Path | None,
    out_dir: Path,
    work_dir: Path,
    runtime: dict,
    train_splits: tuple[str, ...],
    progress: Callable[[dict], None] | None,
    note: Callable[[str], None] | None,
    guard: Callable[[], None] | None,
    dp: ddp.Rank | None,
) -> dict | None:
    """train_cycle's body, in one rank (`dp`; None: the single process). Returns the summary in rank 0."""
    t_start = time.perf_counter()
    lead = dp is None or dp.lead  # the one process that writes and reports
    device = dp.device if dp is not None else resolve_device(runtime.get("device", "auto"))
    autocast = precision_context(device, runtime.get("dtype", "float32"))
    if runtime.get("threads"):
        torch.set_num_threads(int(runtime["threads"]))
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls; CPU results are unaffected

    # ---- data -------------------------------------------------------------------------------------------
    meta = json.loads((corpus_dir / "meta.json").read_text())
    train, doc_starts = training_tokens(corpus_dir, train_splits)
    batch_seqs = batch_sequences(optimizer, seq_len)
    tokens_per_step = batch_seqs * seq_len  # == batch_tokens when it is a multiple of seq_len
    batches = BatchSource(train, doc_starts, seq_len=seq_len, batch_seqs=batch_seqs, seed=trajectory_seed)
    steps = steps_per_cycle(epochs_per_cycle, len(train), tokens_per_step)
    multipliers = schedule_multipliers(schedule, steps)

    # ---- model, teacher, optimizer ----------------------------------------------------------------------
    config = GPTConfig(
        vocab_size=int(meta["vocab_size"]),
        n_layer=model["n_layer"],
        d_model=model["d_model"],
        n_head=model["n_head"],
        dropout=model.get("dropout", 0.0),
        seq_len=seq_len,
    )
    prev_state = load_state(prev_dir / "state.pt") if prev_dir is not None else None
    global_step_start = int(prev_state["global_step"]) if prev_state is not None else 0

    def build(prev_state: dict | None) -> tuple[GPT, torch.optim.Optimizer]:
        """The student and its optimizer as the cycle starts (before perturbation)."""
        torch.manual_seed(trajectory_seed)  # the init only matters for cycle 1; later cycles load weights
        net = GPT(config)
        if prev_dir is not None:
            net.load_state_dict(load_weights(prev_dir / "model.safetensors"))
        net.to(device)
        opt = optimizer_from_params(net, optimizer)  # AdamW, or Muon on the hidden matrices + AdamW
        if prev_state is not None:
            opt.load_state_dict(prev_state["optimizer"])  # never reset across cycles (docs/method.md §3.4)
        return net, opt

    net, opt = build(prev_state)
    del prev_state  # the optimizer may share its tensors

    teacher = None
    if distill is not None:
        # The teacher is the predecessor as it was saved: unperturbed, frozen, no dropout; in bfloat16 on CUDA
        # under bf16 autocast (half the memory, no cast of its weights at every forward).
        teacher = GPT(config)
        teacher.load_state_dict(load_weights(prev_dir / "model.safetensors"))
        bf16 = device.type == "cuda" and runtime.get("dtype") == "bfloat16"
        teacher.to(device, dtype=torch.bfloat16 if bf16 else None).eval().requires_grad_(False)

    # ---- micro-batches and the loss path (runtime only: never in a key) ---------------------------------
    world = dp.world if dp is not None else 1
    rows = ddp.rows_per_rank(batch_seqs, world)  # sequences this device trains on per step
    choice, chunk_tokens = memory_plan(model, optimizer, distill, seq_len, config.vocab_size, rows, device, runtime,
                                       world)  # fmt: skip
    net.checkpoint_blocks = choice.checkpointing

    # ---- fresh start or exact resume ---------------------------------------------------------------------
    # What makes this cycle this cycle: a checkpoint copied from another work folder (another
    # trajectory, cycle, corpus or setting) is recognised and never resumed.
    fingerprint = cycle_fingerprint(
        cycle_index=cycle_index, trajectory_seed=trajectory_seed, steps=steps, global_step_start=global_step_start,
        perturb_scale=perturb_scale, distill=distill, model=model, optimizer=optimizer, schedule=schedule,
        seq_len=seq_len, epochs_per_cycle=epochs_per_cycle, train_tokens=len(train),
        corpus_meta=xxhash.xxh3_128_hexdigest((corpus_dir / "meta.json").read_bytes()),
        prev=file_digest(prev_dir / "model.safetensors")[1] if prev_dir is not None else None,
    )  # fmt: skip
    ckpt_path = work_dir / "ckpt.pt"
    step_losses = torch.zeros(steps, device=device)  # kept on device: no sync per step
    records: list[dict] = []
    wall_before = 0.0
    first_step = 0

    def discard(problem: str) -> None:
        if guard is not None:
            guard()  # the folder may be another process's by now: leave it alone
        for name in (ckpt_path.name, SIDECAR, "progress.json"):
            remove_path(work_dir / name)
        say(
            note, f"checkpoint {ckpt_label(ckpt_path)} {problem}; discarded; restarting cycle {cycle_index} from its start"
        )

    def restore(ckpt: dict) -> None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        check_optimizer_state(net, opt)
        step_losses.copy_(ckpt["step_losses"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"], device)

    dropout_seed = cycle_seed(trajectory_seed, cycle_index, _DROPOUT_SALT)
    ckpt = None
    if lead and (ckpt_path.exists() or ckpt_path.is_symlink()):
        ckpt = load_checkpoint(ckpt_path, steps=steps, global_step_start=global_step_start, fingerprint=fingerprint)
        if isinstance(ckpt, str):
            discard(ckpt)
            ckpt = None
    elif lead and ((work_dir / SIDECAR).exists() or (work_dir / "progress.json").exists()):
        if guard is not None:
            guard()
        for name in (SIDECAR, "progress.json"):  # leftovers of a checkpoint that is gone
            remove_path(work_dir / name)
    if ckpt is not None:
        try:
            restore(ckpt)
        except Exception as e:  # noqa: BLE001  (any misfit: start over, from pristine objects)
            discard(f"does not fit this cycle ({brief_error(e)})")
            ckpt = None
            net, opt = build(load_state(prev_dir / "state.pt") if prev_dir is not None else None)
            step_losses.zero_()
    if dp is not None:
        # Rank 0 alone judges the work folder; the others follow: resume from the checkpoint it checked
        # (safe to read here: rank 0 writes the next one only after a step that every rank takes part in)
        # or start fresh.
        resumed_at = dp.broadcast_int(int(ckpt["step"]) if ckpt is not None else -1)
        if resumed_at >= 0 and not dp.lead:
            ckpt = load_state(ckpt_path)
            restore(ckpt)
            dp.restore_rng(ckpt.get("rng_ranks"), dropout_seed, resumed_at)  # this rank's own dropout stream
    if ckpt is not None:
        records = list(ckpt["records"])
        wall_before = float(ckpt["wall_s"])
        first_step = int(ckpt["step"])
    else:
        if perturb_scale > 0:  # the same seeded noise on every rank
            perturb_weights(net, perturb_scale, cycle_seed(trajectory_seed, cycle_index, _PERTURB_SALT))
        torch.manual_seed(dropout_seed if dp is None else ddp.rank_seed(dropout_seed, dp.rank))  # dropout stream
    del ckpt

    # The student and its loss in one module (hepc.train.objective), so that DDP and torch.compile see the
    # whole forward. Data parallel: DDP averages the gradients over the ranks in backward (and, being built
    # here, starts every rank from rank 0's weights). Checkpoints and outputs are saved from `net`, never a
    # wrapper.
    objective = Objective(net, chunk_tokens=chunk_tokens, alpha=distill["alpha"] if distill else 0.0,
                          temperature=distill["temperature"] if distill else 1.0)  # fmt: skip
    ranked = dp.wrap(objective) if dp is not None else objective
    train_fwd = torch.compile(ranked) if runtime.get("compile") else ranked
    teacher_fwd, teacher_head = None, None
    if teacher is not None:  # chunked: the teacher's hidden states, its head applied chunk by chunk in the loss
        teacher_fwd = teacher.hidden if chunk_tokens else teacher
        teacher_fwd = torch.compile(teacher_fwd) if runtime.get("compile") else teacher_fwd
        teacher_head = teacher.lm_head.weight if chunk_tokens else None
    no_sync = ranked.no_sync if dp is not None else None

    def forward(x: torch.Tensor, y: torch.Tensor):
        """One micro-batch's (loss, ce, kd), the teacher's forward first (its outputs are all that stays)."""
        with autocast:
            teacher_out = teacher_outputs(teacher_fwd, x, bool(chunk_tokens), teacher_head) if teacher_fwd else None
            return train_fwd(x, y, teacher_out)

    # Mid-cycle checkpoints: the state is copied to (pinned) host memory at the step boundary and written,
    # digested as it is written, by a background thread while training goes on; the next checkpoint, the
    # outputs and a stop wait for it (docs/reliability.md).
    writer = BackgroundWriter()
    host_buffers: dict = {}

    def save_checkpoint(done: int, rank_rng: list | None = None, wait: bool = False) -> None:
        writer.wait()  # the previous checkpoint is complete (or its error raised) before anything else
        if guard is not None:
            guard()  # a process that lost its lease never writes into the shared work folder
        work_dir.mkdir(parents=True, exist_ok=True)
        extra = {"rng_ranks": rank_rng} if rank_rng is not None else {}  # data parallel: every rank's RNG
        state = snapshot(
            {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "step": done,
                "steps": steps,
                "global_step_start": global_step_start,
                "step_losses": step_losses,
                "records": list(records),
                "wall_s": wall_before + time.perf_counter() - t_start,
                "fingerprint": fingerprint,
                **extra,
            },
            host_buffers,
        )

        def write() -> None:
            known = save_state_hashed(state, ckpt_path)
            write_digest(ckpt_path, known)  # after the checkpoint is in place: a crash in between reads as damaged
            # A torch-free sidecar so `hepc plan` can show "~ resumable (step 312/381)".
            write_json(work_dir / "progress.json", {"step": done, "steps": steps})

        writer.submit(write)
        if wait:
            writer.wait()

    # ---- the loop ----------------------------------------------------------------------------------------
    base_lr, base_wd, grad_clip = optimizer["lr"], optimizer["weight_decay"], optimizer.get("grad_clip") or 0.0
    log_every = runtime.get("log_every_steps") or 0  # 0: only the last step
    ckpt_every = runtime.get("checkpoint_every_steps") or 0  # 0: never
    ckpt_every_s = 60.0 * float(runtime.get("checkpoint_every_minutes") or 0)  # 0: by steps only
    stop_after = runtime.get("stop_after_steps")
    net.train()
    t_log, tokens_since_log = time.perf_counter(), 0
    t_report, tokens_since_report = t_log, 0  # progress: the first step, then every REPORT_EVERY_S
    t_checkpoint = t_log
    try:
        with deferred_interrupts() as interrupted:
            for s in range(first_step, steps):
                lr_mult, wd_mult = multipliers(s)
                lr, wd = base_lr * lr_mult, base_wd * wd_mult
                set_lr_wd(opt, lr, wd, lr_mult)  # Muon: muon_lr × lr_mult

                x, y = batches.batch(global_step_start + s)  # (B, T) each
                if dp is not None:
                    x, y = dp.rows(x), dp.rows(y)  # this rank's share of the global batch: (B/N, T) each
                x, y = to_device(x, device), to_device(y, device)  # CUDA: pinned, asynchronous
                # Forward and backward over the micro-batches; the gradients of the whole batch add up in .grad
                loss, ce, kd = accumulate(forward, x, y, choice.micro, no_sync)
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if dp is not None:  # report the global-batch means: the mean of the ranks' means of equal shares
                    loss, ce, kd = dp.mean(loss, ce, kd) if kd is not None else (*dp.mean(loss, ce), None)
                step_losses[s] = loss.detach()
                tokens_since_log += tokens_per_step
                tokens_since_report += tokens_per_step

                done = s + 1
                logged = (log_every and done % log_every == 0) or done == steps
                checkpoint_due = done < steps and ((ckpt_every and done % ckpt_every == 0) or done == stop_after)
                record = None
                if logged:
                    loss_value = loss.item()  # the one host sync per logged step
                    now = time.perf_counter()
                    tokens_per_s = tokens_since_log / max(now - t_log, 1e-9)
                    t_log, tokens_since_log = now, 0
                    record = {
                        "step": done,
                        "global_step": global_step_start + done,
                        "loss": loss_value,
                        "ce": ce.item(),
                        "kd": kd.item() if kd is not None else None,
                        "lr": lr,
                        "wd": wd,
                        "tokens_per_s": tokens_per_s,
                    }
                    records.append(record)
                    if not math.isfinite(loss_value):
                        raise FloatingPointError(f"cycle {cycle_index}: loss is {loss_value} at step {done}")
                if progress is not None:  # cheap: a clock read per step; losses only where they were synced anyway
                    now = time.perf_counter()
                    if record is not None or done == first_step + 1 or now - t_report >= REPORT_EVERY_S:
                        progress(progress_info(done, steps, first_step, global_step_start, lr, wd,
                                                tokens_since_report / max(now - t_report, 1e-9), record))  # fmt: skip
                        t_report, tokens_since_report = now, 0
                # Ctrl-C: stop at this boundary with a checkpoint (also after the last step). The wall-time
                # cadence: a checkpoint at the first logged step once it is due. Data parallel: rank 0's
                # requests are shared, so that every rank stops or checkpoints after this same step.
                by_time = bool(ckpt_every_s and lead and logged and done < steps
                               and time.perf_counter() - t_checkpoint >= ckpt_every_s)  # fmt: skip
                if dp is None:
                    stop = interrupted()
                else:
                    stop, by_time = dp.agree(interrupted(), by_time, due=bool(logged or checkpoint_due))
                checkpoint_due = checkpoint_due or by_time
                rank_rng = dp.gather_rng() if dp is not None and (stop or checkpoint_due) else None
                if stop:
                    try:
                        if lead:
                            save_checkpoint(done, rank_rng, wait=True)
                    except Exception as e:  # e.g. the lease is gone: still stop, as asked
                        raise KeyboardInterrupt(
                            f"interrupted after step {done} of {steps} (no checkpoint: {brief_error(e)})"
                        ) from e
                    raise KeyboardInterrupt(f"interrupted after step {done} of {steps} (checkpoint written)")
                if checkpoint_due:
                    if lead:
                        save_checkpoint(done, rank_rng, wait=done == stop_after)
                    t_checkpoint = time.perf_counter()
                    if done == stop_after:
                        raise CycleInterrupted(f"stopped after step {done} of {steps} (checkpoint written)")
    except BaseException:
        with suppress(BaseException):  # a checkpoint still being written finishes before the error goes up
            writer.wait()
        raise
    writer.wait()  # the last mid-cycle checkpoint is complete (a failed write is raised here)

    # ---- outputs -----------------------------------------------------------------------------------------
    if not lead:
        return None  # rank 0 writes them
    if guard is not None:
        guard()
    out_dir.mkdir(parents=True, exist_ok=True)
    tail = max(1, steps // 10)
    summary = {
        "steps": steps,
        "tokens": steps * tokens_per_step,
        "final_loss": step_losses[-tail:].mean().item(),
        "epochs": steps * tokens_per_step / len(train),
        "global_step_end": global_step_start + steps,
        "wall_s": wall_before + time.perf_counter() - t_start,
        "distilled": distill is not None,
        "perturb_scale": perturb_scale,
    }
    if distill is not None:  # the objective mixes CE and KD: its parts apart (CE is what val measures)
        last = [
            r for r in records
            if isinstance(r.get("step"), int) and r["step"] > steps - tail
            and isinstance(r.get("ce"), float) and isinstance(r.get("kd"), float)
        ]  # fmt: skip
        if last:
            summary["final_ce"] = sum(r["ce"] for r in last) / len(last)
            summary["final_kd"] = sum(r["kd"] for r in last) / len(last)
    save_weights(net.state_dict(), out_dir / "model.safetensors")
    save_state({"optimizer": opt.state_dict(), "global_step": global_step_start + steps}, out_dir / "state.pt")
    write_jsonl(out_dir / "metrics.jsonl", records)
    write_json(out_dir / "summary.json", summary)
    return summary
