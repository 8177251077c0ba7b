"""Sample efficiency: how many training runs per problem a representation
needs before hypothesis-training-testing identifies the problem, and whether
weights (``chain``) or function (``activation``) need fewer.

Design, for one solution set (``k`` problems, ``m`` runs of the smallest):

- Held-out side: per problem ``t = round(40% · m)`` runs (at least 1), as
  in the HTT; the rest, ``m - t``, is the largest fitting side.
- Sizes ``n`` (runs per problem the model is fit on): 2, 3, 4, 6, 8, 12, …
  below ``m - t``, and ``m - t`` itself.
- ``repeats`` splits, drawn once: split ``r`` fixes every problem's held-out
  runs and a random order of its other runs; size ``n`` fits on the first
  ``n`` of that order. Sizes are nested and every size and representation of
  a split is tested on the same held-out runs (paired).
- The model is the HTT's (``htt.MODEL``). Per (representation, size): the
  mean held-out accuracy over the splits with a 99% t-interval (of the mean
  over random splits of these runs), and the test of split 0: one-sided
  binomial against chance and the label-permutation test (``B`` permuted
  fitting labellings, one hat matrix); its p is the larger of the two. The
  sizes of one representation are Holm-corrected at α; ``runs_needed`` is
  the smallest size rejected. Each size's floor — the smallest p its design
  can give: the larger of ``chance^(k·t)`` and ``1/min(B + 1, distinct
  labellings of its fitting side)`` — is reported beside it.
- Weights vs function at each size: McNemar's exact test of ``chain`` against
  ``activation`` on split 0's held-out runs; ``fewer`` says which one's
  ``runs_needed`` is smaller.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import htt

SIZES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
REPEATS = 8
TEST_FRACTION = 0.4  # the HTT's held-out share (1 - its train_fraction)
REPRESENTATIONS = ("chain", "activation", "raw", "untrained")


def sizes(runs_per_problem: int) -> tuple[int, list[int]]:
    """(held-out runs per problem, fitting sizes) for problems of ``runs_per_problem`` runs."""
    t = max(1, int(round(TEST_FRACTION * runs_per_problem)))
    top = runs_per_problem - t
    return t, ([s for s in SIZES if s < top] + [top]) if top >= 2 else []


def _splits(codes: np.ndarray, k: int, t: int, top: int, repeats: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per split: (held-out indices, (k, top) fitting order)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(repeats):
        idx = [rng.permutation(np.flatnonzero(codes == c)) for c in range(k)]
        out.append((np.concatenate([i[:t] for i in idx]), np.stack([i[t:t + top] for i in idx])))
    return out


def _right(x: torch.Tensor, codes: np.ndarray, train: np.ndarray, test: np.ndarray, k: int, n_permutations: int,
           seed: int) -> np.ndarray:
    """(1 + B, n_test) whether each held-out run is classified right: the model fit on the real fitting
    labels, then on ``n_permutations`` seeded shuffles of them."""
    p = htt.principal(x[torch.from_numpy(train)], seed=seed)
    y = torch.from_numpy(codes[train])
    rng = np.random.default_rng(seed + 1)
    labels = torch.stack([y] + [y[torch.from_numpy(rng.permutation(len(y)))] for _ in range(n_permutations)])
    pred = htt.ridge_scores(p, labels, p.transform(x[torch.from_numpy(test)]), k).argmax(-1).numpy()
    return pred == codes[test][None]


def _labellings(k: int, n: int) -> float:
    """Distinct labellings of a fitting side of ``n`` runs for each of ``k`` problems: (k·n)! / (n!)^k."""
    return math.exp(math.lgamma(k * n + 1) - k * math.lgamma(n + 1))


def curve(matrices: dict[str, np.ndarray], labels: np.ndarray, *, repeats: int = REPEATS, n_permutations: int = 200,
          alpha: float = 0.01, seed: int = 0) -> dict:
    """The sample-efficiency curves of ``matrices`` (name → (N, D)) of runs
    with problems ``labels`` (N,); see the module doc. Returns ``sizes``,
    ``chance``, ``n_test_per_problem``, ``repeats``, ``n_permutations``, ``curves``
    (name → one row per size), ``runs_needed`` (name → size or None),
    ``paired`` (per size, chain vs activation, when both are given),
    ``fewer`` and ``test`` (the procedure, in words)."""
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    k = len(classes)
    t, szs = sizes(int(np.bincount(codes).min()))
    if k < 2 or not szs:
        return {"sizes": [], "note": f"too few runs per problem for a fitting side of 2 beside {t} held-out"}
    top = szs[-1]
    b = max(n_permutations, math.ceil(2 * len(szs) / alpha) - 1)
    splits = _splits(codes, k, t, top, repeats, seed)
    from scipy import stats  # imported where used: a command with nothing to compute never pays for it

    crit = stats.t.ppf(0.995, repeats - 1) if repeats > 1 else math.inf
    chance = 1 / k
    curves, first_right = {}, {}
    for name, x in matrices.items():
        x = torch.as_tensor(np.asarray(x))
        rows = []
        for size in szs:
            accs, head = [], None
            for r, (test, order) in enumerate(splits):
                right = _right(x, codes, order[:, :size].reshape(-1), test, k, b if r == 0 else 0, seed + r)
                accs.append(float(right[0].mean()))
                head = right if r == 0 else head
            first_right[name, size] = head[0]
            hits, n_test = int(head[0].sum()), head.shape[1]
            mean, half = float(np.mean(accs)), float(crit * np.std(accs, ddof=1) / math.sqrt(repeats)) if repeats > 1 else 1.0
            p_binom = htt.binomial_p(hits, n_test, chance)
            p_perm = float((1 + np.sum(head[1:].mean(1) >= accs[0] - 1e-12)) / (b + 1))
            rows.append({"size": size, "mean": mean, "ci_low": max(0.0, mean - half), "ci_high": min(1.0, mean + half),
                         "accuracy_split0": accs[0], "p_binomial": p_binom, "p_permutation": p_perm,
                         "p": max(p_binom, p_perm),
                         "floor": max(chance ** n_test, 1 / min(b + 1, _labellings(k, size)))})
        rejected = htt.holm({row["size"]: row["p"] for row in rows}, alpha)
        for row in rows:
            row["significant"] = rejected[row["size"]]
        curves[name] = rows
    needed = {name: next((row["size"] for row in rows if row["significant"]), None) for name, rows in curves.items()}
    out = {"sizes": szs, "chance": chance, "n_test_per_problem": t, "repeats": repeats, "n_permutations": b, "curves": curves,
           "runs_needed": needed, "test": TEST.format(alpha=alpha, repeats=repeats, n=len(szs))}
    if "chain" in curves and "activation" in curves:
        paired = []
        for size in szs:
            a, f = first_right["chain", size], first_right["activation", size]
            only_a, only_f = int((a & ~f).sum()), int((f & ~a).sum())
            p = htt.mcnemar_p(only_a, only_f)
            paired.append({"size": size, "only_chain": only_a, "only_activation": only_f, "p_mcnemar": p})
        out["paired"] = paired
        out["fewer"] = _fewer(needed["chain"], needed["activation"])
    return out


def _fewer(weights: int | None, function: int | None) -> str:
    if weights == function:
        return "neither" if weights is None else "same"
    if function is None or (weights is not None and weights < function):
        return "weights"
    return "function"


TEST = ("per size, the held-out accuracy is averaged over {repeats} random splits (99% t-interval of that mean); the "
        "decision uses split 0: the larger of the one-sided binomial p against chance and the label-permutation p, "
        "Holm-corrected over the {n} sizes at family-wise α = {alpha:g}; weights vs function per size: McNemar's "
        "exact test on split 0's held-out runs")
