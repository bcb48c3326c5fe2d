"""`hepc sample`, `hepc score`, `hepc export`, `hepc eval`: use a trained population's top-K ensemble.

SPEC is a trained spec (its store from --store, $HEPC_STORE, runtime.store or runs/), a store folder or a folder
written by `hepc export`. `register(app)` adds the commands to the hepc Typer app (hepc.cli calls it
at its end, as it does hepc.cli.status's). No `from __future__ import annotations` here: the Typer
signatures are built inside `register` from hepc.cli's option types. torch is imported only when a
command runs.
"""

import json
import sys


def split_args(args: list, set_=None, *, files: bool = False) -> tuple:
    """SPEC, then its `key=value` overrides, as every command that takes a spec reads them (the
    `--set` option adds more). For `score` the other arguments are the FILEs to score: an argument is
    an override when it reads `dotted.key=value` and no file of that name exists, else a file.
    Returns (spec, overrides, files)."""
    from hepc.cli.specs import is_override
    from hepc.errors import HepcError

    if not args:
        raise HepcError("missing SPEC (a trained spec, an exported folder or a store folder)")
    spec, rest = args[0], list(args[1:])
    overrides = [a for a in rest if is_override(a)]
    others = [a for a in rest if not is_override(a)]
    if others and not files:
        raise HepcError(f"unexpected argument '{others[0]}' after {spec}: overrides read key=value "
                        "(e.g. population.cycles=12)")
    return spec, overrides + list(set_ or []), others


def _ensemble(spec: str, k, store, overrides, population, device: str, max_resident, threads=None, prior=None):
    from hepc.use.ensemble import load_ensemble

    return load_ensemble(spec, k=k, device=device, overrides=overrides or None, store=store, population=population,
                         prior=prior, max_resident=max_resident, threads=threads)


SMALL_MEMBER_BYTES = 256 << 20  # sampling one sequence: below this, one CPU thread is fastest (no sync per op)


def sample_command(spec, k, prompt, max_tokens, temperature, top_k, top_p, seed, store=None, overrides=None,
                   population=None, device="cpu", max_resident=None, threads=None, prior=None) -> int:
    from hepc.use.sample import check_options, generate

    check_options(prompt, max_tokens, temperature, top_k, top_p)  # before anything is loaded
    ens = _ensemble(spec, k, store, overrides, population, device, max_resident, threads, prior)
    if threads is None and ens.resolved.threads is None and ens.member_bytes < SMALL_MEMBER_BYTES:
        import torch

        torch.set_num_threads(1)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    for piece in generate(ens, prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          seed=seed):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    return 0


def score_command(spec, k, files, json_out=False, store=None, overrides=None, population=None, device="cpu",
                  max_resident=None, threads=None, prior=None) -> int:
    from hepc.errors import HepcError
    from hepc.use.score import render, score_files

    if not files:
        raise HepcError("no FILE to score")
    ens = _ensemble(spec, k, store, overrides, population, device, max_resident, threads, prior)
    result = score_files(ens, files)
    print(json.dumps(result, indent=1) if json_out else render(result))
    return 0


def export_command(spec, k, out, force=False, store=None, overrides=None, population=None, prior=None,
                   fmt: str = "hepc") -> int:
    from pathlib import Path

    from hepc.errors import HepcError
    from hepc.use.export import _check_target, export
    from hepc.use.source import resolve
    from hepc.use.text import ensemble_tokenizer

    if fmt not in ("hepc", "hf"):
        raise HepcError(f"--format: {fmt!r} is not a format (hepc, or hf: also each member for transformers)")
    _check_target(Path(out), force)  # before anything is read
    res = resolve(spec, k, overrides=overrides or None, store=store, population=population, prior=prior)
    tok = ensemble_tokenizer(res.tokenizer_config, res.model["vocab_size"], res.eot_id, res.tokenizer)
    path = export(res, tok, out, force=force, hf=fmt == "hf")
    print(path)
    return 0


def eval_command(spec, k, tasks, include_path=None, limit=None, num_fewshot=None, json_out=False, output=None,
                 store=None, overrides=None, population=None, device="cpu", max_resident=None, seed=0,
                 threads=None, prior=None) -> int:
    from hepc.use.lm_eval_model import run_eval

    ens = _ensemble(spec, k, store, overrides, population, device, max_resident, threads, prior)
    results = run_eval(ens, tasks, include_path=include_path, limit=limit, num_fewshot=num_fewshot, seed=seed)
    if output:
        from pathlib import Path

        Path(output).write_text(json.dumps(results, indent=1, default=str) + "\n")
    if json_out:
        print(json.dumps(results, indent=1, default=str))
    else:
        from hepc.use.lm_eval_model import table

        print(table(results))
    return 0


def register(app) -> None:
    """Add `sample`, `score`, `export` and `eval` to the hepc Typer app."""
    from typing import Annotated

    import typer

    from hepc.cli.app import JsonOpt, StoreOpt, user_errors

    existing = {c.name or getattr(c.callback, "__name__", None) for c in app.registered_commands}
    if "sample" in existing:
        return

    Source = Annotated[list[str], typer.Argument(
        help="SPEC \\[key=value ...]: a trained spec (YAML) and its overrides, a folder written by `hepc export`, or a "
             "store folder.", show_default=False)]
    KOpt = Annotated[str, typer.Option("--k", help="Members: the K largest prior weights, renormalised ('all': every one).")]
    SetOpt = Annotated[list[str] | None, typer.Option(
        "--set", help="A key=value override of the spec (repeatable; the same as one after SPEC).")]
    PriorOpt = Annotated[str | None, typer.Option(
        "--prior", help="SPEC is a store folder with several fitted priors: the one with this key (prefix).")]
    PopOpt = Annotated[str | None, typer.Option("--population", help="The sweep population (its label).")]
    DevOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")]
    ResOpt = Annotated[int | None, typer.Option(
        "--max-resident", min=1, help="Members loaded at once (default: all); fewer streams them.")]
    ThreadsOpt = Annotated[int | None, typer.Option(
        "--threads", min=1, help="torch CPU threads (default: the spec's runtime.threads; sample: 1 for small models).")]

    @app.command()
    @user_errors
    def sample(
        spec: Source,
        prompt: Annotated[str, typer.Option("--prompt", help="Text to continue (a document start).")],
        k: KOpt = "all",
        max_tokens: Annotated[int, typer.Option("--max-tokens", help="Tokens to generate at most.")] = 200,
        temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 1.0,
        top_k: Annotated[int | None, typer.Option("--top-k", help="Draw from the k most likely tokens.")] = None,
        top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus: the most likely tokens holding p.")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the draw (same seed, same text).")] = 0,
        store: StoreOpt = None,
        set_: SetOpt = None,
        population: PopOpt = None,
        prior: PriorOpt = None,
        device: DevOpt = "cpu",
        max_resident: ResOpt = None,
        threads: ThreadsOpt = None,
    ) -> None:
        """Generate text from the top-K ensemble's mixture distribution, streamed to stdout."""
        spec, set_, _ = split_args(spec, set_)
        sample_command(spec, k, prompt, max_tokens, temperature, top_k, top_p, seed, store, set_, population, device,
                       max_resident, threads, prior)

    @app.command()
    @user_errors
    def score(
        spec: Annotated[list[str], typer.Argument(
            help="SPEC \\[key=value ...] FILE...: the trained spec (or an exported or store folder), its overrides, then "
                 "the text files to score (an argument is an override when it reads key=value and no such file exists).",
            show_default=False)],
        k: KOpt = "all",
        json_out: JsonOpt = False,
        store: StoreOpt = None,
        set_: SetOpt = None,
        population: PopOpt = None,
        prior: PriorOpt = None,
        device: DevOpt = "cpu",
        max_resident: ResOpt = None,
        threads: ThreadsOpt = None,
    ) -> None:
        """Nats/token and bits per byte of text files: the top-K ensemble and its best member."""
        spec, set_, files = split_args(spec, set_, files=True)
        score_command(spec, k, files, json_out, store, set_, population, device, max_resident, threads, prior)

    @app.command("export")
    @user_errors
    def export_(
        spec: Source,
        out: Annotated[str, typer.Option("--out", help="Folder to write (must not exist, unless --force).")],
        k: KOpt = "all",
        force: Annotated[bool, typer.Option("--force", help="Replace an earlier export at --out.")] = False,
        fmt: Annotated[str, typer.Option(
            "--format", help="hepc, or hf: also each member as a transformers (Qwen3) model folder under hf/.")] = "hepc",
        store: StoreOpt = None,
        set_: SetOpt = None,
        population: PopOpt = None,
        prior: PriorOpt = None,
    ) -> None:
        """Write the top-K ensemble to a self-contained folder (safetensors, weights, tokenizer, manifest, card)."""
        spec, set_, _ = split_args(spec, set_)
        export_command(spec, k, out, force, store, set_, population, prior, fmt)

    @app.command("eval")
    @user_errors
    def eval_(
        spec: Source,
        tasks: Annotated[str, typer.Option("--tasks", help="lm-eval task names, comma-separated.")],
        k: KOpt = "all",
        include_path: Annotated[str | None, typer.Option("--include-path", help="Folder of extra task YAMLs.")] = None,
        limit: Annotated[int | None, typer.Option("--limit", help="At most this many examples per task.")] = None,
        num_fewshot: Annotated[int | None, typer.Option("--num-fewshot", help="Few-shot examples.")] = None,
        output: Annotated[str | None, typer.Option("--output", help="Also write the results JSON here.")] = None,
        json_out: JsonOpt = False,
        store: StoreOpt = None,
        set_: SetOpt = None,
        population: PopOpt = None,
        prior: PriorOpt = None,
        device: DevOpt = "cpu",
        max_resident: ResOpt = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of lm-eval and of sampling.")] = 0,
        threads: ThreadsOpt = None,
    ) -> None:
        """Downstream tasks through lm-evaluation-harness (pip install 'hepc\\[eval]')."""
        spec, set_, _ = split_args(spec, set_)
        eval_command(spec, k, tasks, include_path, limit, num_fewshot, json_out, output, store, set_, population,
                     device, max_resident, seed, threads, prior)
