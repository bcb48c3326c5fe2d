"""The population spec as strict, frozen pydantic models.

Field docstrings become JSON-schema descriptions (`hepc schema`, read by hepc/spec/schema.py).
Cross-field rules that need a location of their own live in `hepc.spec.checks`, not in validators here.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, JsonValue

from hepc.spec.data_models import KEY_OMITS_DEFAULT, NAME_PATTERN, SWEEP_PATH_PATTERN, Data, Strict

# --------------------------------------------------------------------------- model / optimizer


class Model(Strict):
    """A GPT: RoPE, RMSNorm, SwiGLU, QK-norm, untied embeddings, dropout."""

    n_layer: Annotated[int, Field(ge=1, le=256)]
    """Number of transformer blocks."""
    d_model: Annotated[int, Field(ge=8, le=65536)]
    """Residual stream width."""
    n_head: Annotated[int, Field(ge=1, le=1024)]
    """Attention heads (d_model must divide into an even head size)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Dropout on the attention and MLP residual branches."""


class Optimizer(Strict):
    """`adamw`: AdamW with decoupled weight decay (applied to matrices only). `muon` (q0's optimizer):
    Muon for the hidden matrices (the attention and MLP weights of the transformer blocks) and AdamW,
    as above, for everything else (token embedding, output head, any vectors)."""

    kind: Literal["adamw", "muon"] = "adamw"
    """Optimizer family: `adamw`, or `muon` (Muon for the hidden matrices + AdamW for the rest)."""
    lr: Annotated[float, Field(gt=0, le=10)]
    """Peak learning rate (of AdamW; with `muon`, of the parameters AdamW trains)."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """Peak (base) weight decay; the schedule multiplies it. With `muon` it is Muon's too, decoupled
    like AdamW's: W ← W·(1 − muon_lr·weight_decay) per step (both times the schedule's multipliers)."""
    batch_tokens: Annotated[int, Field(gt=0)]
    """Tokens per optimizer step (a multiple of data.seq_len)."""
    grad_clip: Annotated[float, Field(gt=0)] | None = 1.0
    """Gradient-norm clip (over all parameters); null disables it."""
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = [
        0.9,
        0.95,
    ]
    """AdamW (beta1, beta2)."""
    eps: Annotated[float, Field(gt=0)] = 1e-8
    """AdamW epsilon."""
    muon_lr: Annotated[float, Field(gt=0, le=10)] = 0.02
    """`muon` only: peak learning rate of Muon's orthogonalised updates (the schedule's LR multiplier
    applies to it as to `lr`); a rows × cols matrix steps by muon_lr·√max(1, rows/cols)."""
    muon_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.95
    """`muon` only: Muon's momentum (its buffer is an exponential average of the gradients)."""
    nesterov: bool = True
    """`muon` only: Nesterov momentum (the update looks one momentum step ahead)."""
    ns_steps: Annotated[int, Field(ge=1, le=99)] = 5
    """`muon` only: Newton–Schulz steps that orthogonalise the update (quintic, coefficients
    3.4445, −4.7750, 2.0315, in bfloat16)."""

    def muon_settings(self) -> dict:
        """The `muon`-only fields and their values (set with kind adamw they are an error)."""
        return {"muon_lr": self.muon_lr, "muon_momentum": self.muon_momentum, "nesterov": self.nesterov,
                "ns_steps": self.ns_steps}  # fmt: skip

    def step_params(self) -> dict:
        """The hashed `optimizer` params of the cycle steps: every field for `muon`; for `adamw` exactly
        the fields that existed before `muon` did, so every AdamW key (and stored result) stays valid."""
        params = self.model_dump()
        if self.kind != "muon":
            for name in self.muon_settings():
                del params[name]
        return params


# --------------------------------------------------------------------------- population


class CyclicSchedule(Strict):
    """q0's anti-correlated sawtooth: LR falls 1 → lr_floor while WD rises wd_floor → 1 in every cycle."""

    kind: Literal["cyclic"]
    lr_floor: Annotated[float, Field(gt=0, le=1)] = 0.08
    """LR multiplier reached at the end of each cycle."""
    wd_floor: Annotated[float, Field(ge=0, le=1)] = 0.7
    """WD multiplier at the start of each cycle (1 = flat weight decay, the ablation)."""


class ConstantSchedule(Strict):
    """Constant LR and WD with a final linear warmdown (single-model and independent-ensemble baselines)."""

    kind: Literal["constant"]
    warmdown: Annotated[float, Field(ge=0, le=1)] = 0.2
    """Fraction of each cycle's steps over which the LR decays linearly to zero."""


Schedule = Annotated[CyclicSchedule | ConstantSchedule, Field(discriminator="kind")]


class Distill(Strict):
    """Chain distillation: each cycle after `after_cycles` trains against its predecessor snapshot."""

    after_cycles: Annotated[int, Field(ge=1)] = 8
    """Cycles 1..after_cycles are plain cross-entropy; later cycles are distilled (at least 1: cycle 1 has no teacher)."""
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.45
    """Weight of the KL term: loss = (1 - alpha)·CE + alpha·T²·KL(teacher || student)."""
    temperature: Annotated[float, Field(gt=0)] = 1.2
    """Softmax temperature of both teacher and student in the KL term."""


class Perturb(Strict):
    """Gaussian weight noise between cycles, std = tensor std × scale, cosine-decayed per boundary."""

    start: Annotated[float, Field(ge=0, le=10)] = 0.25
    """Scale at the first cycle boundary."""
    end: Annotated[float, Field(ge=0, le=10)] = 0.05
    """Scale from boundary `decay_cycles` on."""
    decay_cycles: Annotated[int, Field(ge=1)] = 8
    """Boundaries over which the scale decays (fixed per boundary index, not by the cycle count)."""


class Population(Strict):
    """P parallel trajectories × C cycles × E epochs per cycle; a snapshot at every cycle end."""

    trajectories: Annotated[int, Field(ge=1, le=4096)]
    """P: independent trajectories (seed = spec seed + trajectory index)."""
    cycles: Annotated[int, Field(ge=1, le=100000)]
    """C: cycles per trajectory."""
    epochs_per_cycle: Annotated[float, Field(gt=0, le=10000)]
    """E: epochs of the train split per cycle (fractional allowed)."""
    schedule: Schedule
    """LR/WD schedule inside each cycle (`kind`: cyclic or constant)."""
    distill: Distill | None = None
    """Chain distillation settings; absent = no distillation."""
    perturb: Perturb | None = None
    """Weight perturbation between cycles; absent = none."""


SweepValue = JsonValue

Budget = Union[Annotated[int, Field(ge=1)], Literal["all"]]


class Prior(Strict):
    """How members are weighted and selected for an inference budget K."""

    kind: Literal["learned", "uniform", "shrinkage"] = "learned"
    """`learned`: softmax weights minimising the held-out NLL (the paper's prior; AdamW, `steps`, `lr`);
    `uniform`: equal weights; `shrinkage`: the same objective pulled toward uniform, the pull's strength
    chosen by cross-validation over held-out documents (`folds`, `strengths`, `em_iters`): the prior to
    trust with a small held-out slice, where `learned` overfits (it falls back to uniform when the
    held-out data carries no signal)."""
    steps: Annotated[int, Field(ge=1, le=100000)] = 300
    """AdamW steps of the prior fit (`learned` only)."""
    lr: Annotated[float, Field(gt=0)] = 0.5
    """Learning rate of the prior fit (`learned` only)."""
    budgets: Annotated[list[Budget], Field(min_length=1)] = ["all"]
    """Inference budgets K to report (top-K members by weight); `all` = every snapshot."""
    aggregate: Literal["probability", "logit"] = Field("probability", json_schema_extra=KEY_OMITS_DEFAULT)
    """How the top-K members are combined on val: `probability` (weighted mixture, the method) or
    `logit` (softmax of the weighted mean logits; the ablation, final budget only: the loss curve
    always averages probabilities)."""
    folds: Annotated[int, Field(ge=2, le=100, json_schema_extra=KEY_OMITS_DEFAULT)] = 5
    """`shrinkage`: cross-validation folds, each a group of whole held-out documents (contiguous blocks
    of tokens when the corpus records no held-out document boundaries); fewer when there are fewer
    documents."""
    strengths: Annotated[
        list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=1, max_length=64, json_schema_extra=KEY_OMITS_DEFAULT)
    ] = [0.0, 0.01, 0.03, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0]
    """`shrinkage`: the grid of strengths λ cross-validation chooses from. λ is the share of
    pseudo-counts spread evenly over the members: the weights minimise the held-out NLL plus
    λ/(1−λ)·KL(uniform ‖ w), so 0 is the plain maximum-likelihood fit and 1 the uniform prior."""
    em_iters: Annotated[int, Field(ge=1, le=100000, json_schema_extra=KEY_OMITS_DEFAULT)] = 100
    """`shrinkage`: most accelerated EM cycles (three EM updates each) per fit."""

    def step_params(self) -> dict:
        """The hashed `prior` params of the prior and curve steps: only what the kind uses.

        `learned` and `uniform` give exactly {kind, steps, lr}, as before `shrinkage` existed, so their
        keys and stored results stay valid. The strength grid is sorted and deduplicated (the fit does
        the same), so equal grids share a key. `solver` names the shrinkage fit's numerics: change it
        when they change (the prior kind's impl_version would invalidate every learned result too).
        """
        if self.kind == "shrinkage":
            return {"kind": self.kind, "folds": self.folds, "strengths": sorted(set(self.strengths)),
                    "em_iters": self.em_iters, "solver": "map-em-squarem/1"}
        return {"kind": self.kind, "steps": self.steps, "lr": self.lr}


# --------------------------------------------------------------------------- runtime (never hashed)


class Runtime(Strict):
    """How to run, not what to compute: nothing here enters a step key."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where steps run; auto = cuda when available."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Autocast dtype on GPU (CPU always computes in float32)."""
    compile: bool = False
    """torch.compile the training model."""
    threads: Annotated[int, Field(ge=1)] | None = None
    """torch CPU threads; null = torch's default."""
    checkpoint_every_steps: Annotated[int, Field(ge=0)] = 200
    """Mid-cycle checkpoint cadence in optimizer steps (0 = only at cycle ends)."""
    checkpoint_every_minutes: Annotated[float, Field(gt=0)] | None = None
    """Also checkpoint at the first logged step once this many minutes have passed since the last
    checkpoint (or the cycle's start); null: by steps only. Checkpoints are written in the background."""
    log_every_steps: Annotated[int, Field(ge=1)] = 10
    """Metrics cadence in optimizer steps."""
    store: str | None = None
    """Store folder (default: $HEPC_STORE or runs/); --store overrides it."""
    jobs: Annotated[int, Field(ge=1)] | None = None
    """Steps run at once, each in its own worker process; null = one per visible GPU, else 1 (--jobs overrides)."""
    backend: Literal["local", "ray"] = "local"
    """local: worker processes on this machine; ray: Ray tasks on a cluster (extra hepc[ray]; --backend overrides)."""
    ray_address: str | None = None
    """Ray cluster to join (`auto`, `HOST:PORT` or `ray://HOST:PORT`); null: $RAY_ADDRESS or a local Ray (--address)."""
    gpus_per_step: Annotated[int, Field(ge=1)] = 1
    """Data-parallel processes per training cycle (GPUs on CUDA, gloo ranks on CPU); the global batch is unchanged."""
    micro_batch: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    """Sequences per forward and backward on one device; a step's batch is accumulated over micro-batches
    (same optimizer step). auto: the largest divisor of the device's rows that fits its memory (`hepc plan`
    shows it; on the CPU the whole batch, as before)."""
    activation_checkpointing: Literal["auto"] | bool = "auto"
    """Keep only each block's input and recompute the block in backward (torch.utils.checkpoint): about a
    third more compute, much less memory. auto: only when not even one sequence fits without it."""
    loss_chunk_tokens: Annotated[int, Field(ge=0)] | None = None
    """The output projection and the loss computed this many tokens at a time, so no full-vocabulary
    logits exist; 0: full logits; null: 2048 on CUDA, 0 on the CPU (the losses of earlier versions, bit for bit)."""
    device_memory_gb: Annotated[float, Field(gt=0)] | None = None
    """Memory of one device in GB (10^9 bytes) for planning and the micro-batch, e.g. to plan here for a GPU
    that is elsewhere; null: what the device reports (nvidia-smi, torch), 80 for a cuda spec where no GPU
    is visible, this machine's memory on the CPU."""
    deterministic: bool = False
    """Ask torch for deterministic kernels (on CUDA: cuBLAS workspace setting, no nondeterministic attention
    backward; slower), so runs repeat on the same hardware and software. CPU runs are bit-exact anyway."""
    cpus_per_step: Annotated[int, Field(ge=1)] | None = None
    """CPU cores a step asks for (Ray's resource request, local workers' thread share); null: cores / jobs."""
    data_elsewhere: bool = False
    """The data lives on another machine (a cluster's disk): where it is not found here, `validate` and
    `plan` warn instead of exiting 2 (as with --data-elsewhere); `run` always needs it."""
    tensorboard: bool = False
    """Also write TensorBoard event files (train loss, ce, kd, lr, wd, tokens/s; val loss per cycle) under the
    run record (records/<name>/<run>/tensorboard); needs the extra: pip install 'hepc[tensorboard]'."""


# --------------------------------------------------------------------------- the spec


class Spec(Strict):
    """One experiment: a corpus, a model, an optimizer, a population and a prior."""

    version: Literal[1]
    """Spec format version."""
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    """Experiment name (letters, digits, '.', '_', '-'); names the run records."""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    """Base seed: trajectory p uses seed + p for its init and data order."""
    data: Data
    """The fixed corpus and its splits."""
    model: Model
    """The GPT every member shares."""
    optimizer: Optimizer
    """Optimizer and batch size (one optimizer per trajectory, never reset between cycles)."""
    population: Population
    """Trajectories, cycles, schedule, distillation, perturbation."""
    prior: Prior = Prior()
    """Member weighting and inference budgets."""
    runtime: Runtime = Runtime()
    """Execution settings; never part of a step key."""
    sweep: Annotated[
        dict[Annotated[str, Field(pattern=SWEEP_PATH_PATTERN)], Annotated[list[SweepValue], Field(min_length=1)]],
        Field(min_length=1),
    ] | None = None
    """Dotted path → list of values; the cross product becomes several populations in one graph
    (steps they have in common are shared by key). Example: {population.epochs_per_cycle: [1, 2, 4]}."""
