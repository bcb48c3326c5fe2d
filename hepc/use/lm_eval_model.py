"""The ensemble as an lm-evaluation-harness model, registered as `hepc` (optional extra: `hepc[eval]`).

    loglikelihood          log p(continuation | document start + context) under the mixture, and
                           whether greedy decoding produces the continuation (Ensemble.continuation_logprob)
    loglikelihood_rolling  −nats of the whole text as one document (every token after end-of-text)
    generate_until         mixture sampling (hepc.use.sample), greedy unless gen_kwargs ask otherwise,
                           cut at the first `until` string

A context longer than the model's seq_len keeps its last seq_len tokens (as much as the model takes).
lm-eval discovers only its own models, so the class is registered when this module is imported:
`hepc eval` does that, and `python -m hepc.use.lm_eval_model run --model hepc --model_args
spec=SPEC,k=8 --tasks ...` is lm-eval's own command line with the model registered.
"""

from __future__ import annotations

import sys

from hepc.errors import HepcError

try:
    import lm_eval.models  # noqa: F401  (the harness's own models first: registering `hepc` into an empty

    # registry would stop it from loading them, and `--model hf` would be unknown in this process)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - the extra is not installed
    raise HepcError("lm-eval is not installed: pip install 'hepc[eval]' (package lm-eval)") from None


def _none(value):
    return None if value in (None, "", "None", "none") else value


def _device(device) -> str:
    """lm-eval passes its own default (`cuda:0`, or `cuda` without a GPU): a CUDA device when there is
    one, else the CPU."""
    name = str(_none(device) or "cpu")
    if name.startswith("cuda"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@register_model("hepc")
class HepcLM(LM):
    """model_args: spec (a trained spec or an exported folder; `path` is the same), k (default all),
    store, population, device (cpu), max_resident; or `ensemble=` an Ensemble object (Python only)."""

    def __init__(self, spec=None, path=None, k="all", store=None, population=None, device="cpu",
                 max_resident=None, ensemble=None, seed=0, **_ignored):
        super().__init__()
        if ensemble is None:
            from hepc.use.ensemble import load_ensemble

            source = _none(spec) or _none(path)
            if source is None:
                raise HepcError("model_args: give spec=SPEC (a trained spec) or path=DIR (an exported ensemble)")
            mr = _none(max_resident)
            ensemble = load_ensemble(str(source), k=str(k), device=_device(device), store=_none(store),
                                     population=_none(population), max_resident=None if mr is None else int(mr))
        self.ensemble = ensemble
        self.seed = int(seed)

    @property
    def tokenizer_name(self) -> str:
        return str(self.ensemble.resolved.tokenizer_config.get("kind"))

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for req in requests:
            context, continuation = req.args[0], req.args[1]
            out.append(self.ensemble.continuation_logprob(context, continuation))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from hepc.use.text import document_tokens

        out = []
        for req in requests:
            tokens = document_tokens(self.ensemble.tokenizer, req.args[0], None)
            if tokens.size < 2:
                out.append(0.0)
                continue
            logp, _ = self.ensemble.target_logprobs(tokens, 1)
            out.append(float(logp.sum()))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from hepc.use.sample import generate_ids
        from hepc.use.text import encode_document

        out = []
        for req in requests:
            context, kwargs = req.args[0], dict(req.args[1] or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = int(kwargs.get("max_gen_toks", 256))
            temperature = float(kwargs.get("temperature", 0.0))
            if not kwargs.get("do_sample", temperature > 0.0):
                temperature = 0.0
            ids = encode_document(self.ensemble.tokenizer, context)
            new: list[int] = []
            text = ""
            for tok in generate_ids(self.ensemble, ids, max_tokens=max_tokens, temperature=temperature,
                                    top_k=kwargs.get("top_k"), top_p=kwargs.get("top_p"), seed=self.seed):
                new.append(tok)
                text = self.ensemble.tokenizer.decode(new)
                if any(u and u in text for u in until):
                    break
            for u in until:
                if u and u in text:
                    text = text[: text.index(u)]
            out.append(text)
        return out


def run_eval(ensemble, tasks, *, include_path=None, limit=None, num_fewshot=None, seed: int = 0) -> dict:
    """lm-eval's simple_evaluate on `tasks` (names, comma-separated or a list); the results dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise HepcError("--tasks: no task named")
    manager = None
    if include_path:  # indexing lm-eval's own thousands of tasks takes seconds: only when they are needed
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if any(t not in manager.all_tasks for t in names):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in names if t not in manager.all_tasks]
    if unknown:
        where = f" (nor in {include_path})" if include_path else ""
        raise HepcError(f"--tasks: lm-eval knows no task {', '.join(map(repr, unknown))}{where}; "
                        "`lm_eval ls tasks` lists them, --include-path adds a folder of task YAMLs")
    _quiet_git_lookup()
    try:
        res = lm_eval.simple_evaluate(
            model=HepcLM(ensemble=ensemble, seed=seed), tasks=names, num_fewshot=num_fewshot, limit=limit,
            task_manager=manager, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed, log_samples=False,
        )
    except (ConnectionError, OSError) as e:
        raise HepcError(f"lm-eval could not read a task's data ({e}); a standard task downloads its data set "
                        "once (set HF_DATASETS_OFFLINE=1 to use the local cache only)") from None
    keep = ("results", "groups", "versions", "n-shot", "higher_is_better", "n-samples")
    out = {k: res[k] for k in keep if k in res}
    out["model"] = {"hepc": ensemble.provenance}
    return out


def _quiet_git_lookup() -> None:
    """lm-eval records the git commit of the folder it runs in by running `git describe`, whose "fatal:
    not a git repository" then reaches the user's terminal; hepc's results carry their own provenance
    (the ensemble's spec, keys and store), so that lookup is answered without running git."""
    from lm_eval import evaluator

    if hasattr(evaluator, "get_git_commit_hash"):
        evaluator.get_git_commit_hash = lambda: None


def table(results: dict) -> str:
    from lm_eval.utils import make_table

    return make_table(results)


def main() -> None:
    """lm-eval's command line with the `hepc` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    sys.exit(main())
