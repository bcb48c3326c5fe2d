"""Using what a population learned: load the top-K ensemble, sample, score text, export, evaluate.

    source.py         which members, weights, model, tokenizer and provenance (a store or an export; no torch)
    text.py           the corpus's tokenizer and document rule for text in and out (no torch)
    ensemble.py       Ensemble / load_ensemble: the mixture's next-token distribution and scores (torch)
    sample.py         generation from the mixture (temperature, top-k, top-p, seeded)
    decode.py         the K resident members as one batched decoder with a key/value cache (sampling's step)
    score.py          nats/token and bits per byte of text files, ensemble and members
    export.py         a self-contained folder: safetensors, weights, tokenizer, manifest with sha256, card
    export_check.py   an exported folder checked before it is loaded (strict manifest, digests, shapes)
    hf.py             members as transformers Qwen3 folders (the RoPE and norm mapping)
    lm_eval_model.py  the ensemble as an lm-evaluation-harness model ("hepc"), optional extra `eval`
"""
