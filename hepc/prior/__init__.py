"""The learned prior over a population: val rows streamed from disk, the fits, shrinkage, top-K selection, the loss curve.

Everything here works on cached per-token probabilities of the correct token (docs/method.md §6.1):
row i of a matrix ``P`` (shape M×N) holds p_{i,n} = softmax(logits_{i,n})[y_n] of snapshot i on
token n. Members are combined by **weighted probability averaging** (docs/method.md §6.2):

    loss(w) = −(1/N) Σ_n log( max( Σ_i w_i p_{i,n}, FLOOR ) ),    FLOOR = 1e-12,

accumulated in float64. The prior (docs/method.md §6.3) is the maximum-likelihood mixture weight vector
on the held-out slice (``fit_prior``, AdamW as in the paper; ``fit_prior_em``); a budget of K members
keeps the K largest weights, renormalised, without a refit (§6.5). On a small held-out slice that fit
overfits its M weights, so ``fit_prior_shrinkage`` pulls it toward uniform with a strength chosen by
cross-validation over held-out documents (§6.4). ``loss_curve`` walks the snapshots in the order they
become available (§4.5) and scores the top-K ensemble at each point (§8.1).

Scale (the paper: 480 snapshots, 131K held-out and 10M val tokens): val is never held in memory
whole. Scoring reads ``P`` a column block at a time, from an array, a memory map or a ``RowStack`` of
rows read from disk (one ``probs.npy`` per member), and ``ensemble_losses`` scores any number of
ensembles in one pass. The curve's prior fits on every prefix of the availability order run batched
(``fit_prior_prefixes``): the same AdamW runs as ``fit_prior`` on each prefix, advanced together.

    rows.py       P held or streamed (RowStack, NpyRow), its checks, the mixture's loss
    fit.py        the maximum-likelihood prior: AdamW (one or every prefix, batched) and EM
    shrinkage.py  the shrinkage prior: MAP-EM toward uniform, strength by cross-validation (SQUAREM)
    select.py     top-K and the loss of weighted ensembles
    curve.py      availability order, budgets and the loss-vs-budget curve

numpy only: this package must stay cheap to import (no torch).
"""
