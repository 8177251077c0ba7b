"""Hypothesis-training-testing and retrieval on weight representations (METHOD.md §5).

H1: networks trained on the same problem converge to similar solutions, so a
network's problem is recoverable from its (normalized) weights even for
networks never seen in training. H0: held-out accuracy is at chance.

``hypothesis_training_testing`` splits the runs per problem (never one run on
both sides), standardizes on the training side only, fits an L2-regularized
multinomial logistic regression (the weight-representation model) and tests on
the held-out runs. Because the L2 solution lies in the span of the training
rows, the model is fit on the training rows' principal coordinates, which is
exact and fast for ``D ≫ n``. The label-permutation test repeats the whole
training with shuffled training labels — all ``B`` models are fit at once as
one batched convex problem.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import stats

from .errors import SpecError

CI_LEVEL = 0.99  # matches the decision level α = 0.01


@dataclass(frozen=True)
class HTTResult:
    accuracy: float
    chance: float
    p_binomial: float
    p_permutation: float
    n_train: int
    n_test: int
    ci_low: float = 0.0
    ci_high: float = 1.0
    n_permutations: int = 0
    classes: list = field(default_factory=list)
    confusion: list = field(default_factory=list)  # rows: true class, columns: predicted

    def to_dict(self) -> dict:
        return asdict(self)

    def significant(self, alpha: float = 0.01) -> bool:
        return self.p_permutation <= alpha and self.p_binomial <= alpha


def split_per_problem(y: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train mask: per problem a seeded ``train_fraction`` of its runs
    (at least one on each side)."""
    rng = np.random.default_rng(seed)
    train = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) < 2:
            raise SpecError(f"problem {c} has {len(idx)} run(s): need at least 2 to train and test")
        k = min(max(1, int(round(train_fraction * len(idx)))), len(idx) - 1)
        train[idx[:k]] = True
    return train, ~train


def _principal(x_train: np.ndarray, x_test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardize on the training rows, then express both sides in the
    orthonormal basis of the centred training rows (exact for L2 models)."""
    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 1e-12 * max(sd.max(), 1e-300), sd, 1.0)
    a, b = (torch.from_numpy((x - mu) / sd) for x in (x_train, x_test))
    _, s, vt = torch.linalg.svd(a, full_matrices=False)
    keep = s > 1e-10 * max(float(s.max()) if len(s) else 0.0, 1e-300)
    v = vt[keep].T
    return a @ v, b @ v


def fit_predict(z_train: torch.Tensor, labels: torch.Tensor, z_test: torch.Tensor, k: int, c: float = 1.0,
                iters: int = 100) -> torch.Tensor:
    """Batched L2 multinomial logistic regression (sklearn's objective with
    ``C = c``): ``labels`` (B, n) → predicted classes (B, m) for ``z_test``."""
    b, n = labels.shape
    r = z_train.shape[1]
    w = torch.zeros(b, r + 1, k, dtype=torch.float64, requires_grad=True)
    z1 = torch.cat([z_train, torch.ones(n, 1, dtype=torch.float64)], 1)
    onehot = torch.nn.functional.one_hot(labels, k).to(torch.float64)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=iters, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = torch.einsum("nr,brk->bnk", z1, w)
        loss = -(onehot * torch.log_softmax(logits, -1)).sum() + 0.5 / c * (w[:, :-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        zt = torch.cat([z_test, torch.ones(len(z_test), 1, dtype=torch.float64)], 1)
        return torch.einsum("mr,brk->bmk", zt, w).argmax(-1)


def clopper_pearson(k: int, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    a = (1 - level) / 2
    lo = stats.beta.ppf(a, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(1 - a, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def hypothesis_training_testing(X, y, *, train_fraction: float = 0.6, n_permutations: int = 200,
                                seed: int = 0) -> HTTResult:
    """Held-out problem classification from weight representations.

    ``X`` (N, D) representations of N runs, ``y`` (N,) their problems.
    Returns accuracy, chance (majority-class rate of the test side), the
    one-sided binomial p-value against chance, the permutation p-value
    ``(1 + #{permuted accuracy ≥ observed}) / (B + 1)``, a Clopper–Pearson
    interval at ``CI_LEVEL`` and the confusion matrix."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise SpecError(f"X must be (N, D) with N = len(y); got {X.shape} and {len(y)} labels")
    if not np.isfinite(X).all():
        raise SpecError("X contains NaN or inf")
    if not 0 < train_fraction < 1 or n_permutations < 0:
        raise SpecError("need 0 < train_fraction < 1 and n_permutations >= 0")
    classes, codes = np.unique(y, return_inverse=True)
    k = len(classes)
    if k < 2:
        raise SpecError("need runs of at least 2 problems")
    train, test = split_per_problem(codes, train_fraction, seed)
    z_tr, z_te = _principal(X[train], X[test])
    y_tr, y_te = torch.from_numpy(codes[train]), codes[test]
    rng = np.random.default_rng(seed + 1)
    perms = [rng.permutation(len(y_tr)) for _ in range(n_permutations)]
    labels = torch.stack([y_tr] + [y_tr[torch.from_numpy(p)] for p in perms])
    pred = fit_predict(z_tr, labels, z_te, k).numpy()
    accs = (pred == y_te[None]).mean(1)
    acc = float(accs[0])
    n_test = int(test.sum())
    hits = int(round(acc * n_test))
    chance = float(np.bincount(y_te, minlength=k).max() / n_test)
    p_binom = float(stats.binomtest(hits, n_test, chance, alternative="greater").pvalue)
    p_perm = float((1 + np.sum(accs[1:] >= acc - 1e-12)) / (n_permutations + 1))
    confusion = np.zeros((k, k), int)
    np.add.at(confusion, (y_te, pred[0]), 1)
    lo, hi = clopper_pearson(hits, n_test)
    return HTTResult(acc, chance, p_binom, p_perm, int(train.sum()), n_test, lo, hi, n_permutations,
                     [c.item() if hasattr(c, "item") else c for c in classes], confusion.tolist())


@dataclass(frozen=True)
class RetrievalResult:
    """Open-set retrieval on problems never seen when fitting the embedding."""

    cmc: dict  # rank → fraction of queries with a same-problem item in the top ``rank``
    mean_ap: float
    chance_cmc: dict
    chance_map: float
    n_queries: int
    n_gallery: int
    train_problems: list
    test_problems: list

    def to_dict(self) -> dict:
        return asdict(self)


def _average_precision(relevant: np.ndarray) -> np.ndarray:
    """relevant (Q, G) in ranked order → AP per query."""
    hits = np.cumsum(relevant, 1)
    prec = hits / np.arange(1, relevant.shape[1] + 1)
    return (prec * relevant).sum(1) / np.maximum(relevant.sum(1), 1)


def retrieval(X, y, *, train_fraction: float = 0.5, ranks: tuple[int, ...] = (1, 5, 10), seed: int = 0,
              n_random: int = 1000) -> RetrievalResult:
    """Fit a linear embedding (standardize → principal coordinates → LDA) on a
    seeded ``train_fraction`` of the problems; on every other problem, half
    of its runs are queries and half the gallery; rank the gallery by cosine
    similarity in the embedding. CMC at ``ranks`` and mAP, with chance levels
    from ``n_random`` random rankings."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    problems = np.unique(y)
    if len(problems) < 4:
        raise SpecError("retrieval needs at least 4 problems (2 to fit, 2 unseen)")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(problems)
    n_fit = min(max(2, int(round(train_fraction * len(problems)))), len(problems) - 2)
    fit_p, test_p = np.sort(shuffled[:n_fit]), np.sort(shuffled[n_fit:])
    fit = np.isin(y, fit_p)
    z_fit, z_rest = _principal(X[fit], X[~fit])
    lda = LinearDiscriminantAnalysis().fit(z_fit.numpy(), y[fit])
    emb = lda.transform(z_rest.numpy())
    y_rest = y[~fit]
    query = np.zeros(len(y_rest), bool)
    for p in test_p:
        idx = rng.permutation(np.flatnonzero(y_rest == p))
        query[idx[: len(idx) // 2]] = True
    q, g = emb[query], emb[~query]
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-300)
    gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)
    order = np.argsort(-(qn @ gn.T), axis=1, kind="stable")
    same = y_rest[query][:, None] == y_rest[~query][None, :]
    ranked = np.take_along_axis(same, order, 1)
    rand = np.stack([same[:, rng.permutation(same.shape[1])] for _ in range(n_random // max(len(q), 1) + 1)])
    rand = rand.reshape(-1, same.shape[1])
    cmc = {int(r): float(ranked[:, :r].any(1).mean()) for r in ranks}
    chance = {int(r): float(rand[:, :r].any(1).mean()) for r in ranks}
    return RetrievalResult(cmc, float(_average_precision(ranked).mean()), chance,
                           float(_average_precision(rand).mean()), int(query.sum()), int((~query).sum()),
                           fit_p.tolist(), test_p.tolist())


def cross_test(X_fit, y_fit, X_eval, y_eval, c: float = 1.0) -> dict:
    """A representation model fit on one solution set (all its runs), evaluated
    on another with the same problems: accuracy, chance and binomial p-value."""
    X_fit, X_eval = np.asarray(X_fit, np.float64), np.asarray(X_eval, np.float64)
    if X_fit.shape[1] != X_eval.shape[1]:
        raise SpecError(f"cross test needs features of equal size ({X_fit.shape[1]} vs {X_eval.shape[1]})")
    classes = np.unique(y_fit)
    lookup = {v: i for i, v in enumerate(classes.tolist())}
    keep = np.isin(y_eval, classes)
    if not keep.any():
        raise SpecError("cross test: the two solution sets share no problem")
    z_fit, z_eval = _principal(X_fit, X_eval[keep])
    y_codes = torch.tensor([lookup[v] for v in np.asarray(y_fit).tolist()])
    pred = fit_predict(z_fit, y_codes[None], z_eval, len(classes), c)[0].numpy()
    truth = np.array([lookup[v] for v in np.asarray(y_eval)[keep].tolist()])
    hits, n = int((pred == truth).sum()), int(keep.sum())
    chance = float(np.bincount(truth, minlength=len(classes)).max() / n)
    return {"accuracy": hits / n, "chance": chance, "n_test": n,
            "p_binomial": float(stats.binomtest(hits, n, chance, alternative="greater").pvalue)}


def decision(result: HTTResult, alpha: float = 0.01) -> str:
    """'reject H0' / 'keep H0' at level ``alpha``, with the effect size."""
    gain = result.accuracy - result.chance
    verdict = "reject H0" if result.significant(alpha) else "keep H0"
    return (f"{verdict} at α={alpha:g}: held-out accuracy {result.accuracy:.3f} vs chance {result.chance:.3f} "
            f"(+{gain:.3f}; {CI_LEVEL:.0%} CI {result.ci_low:.3f}–{result.ci_high:.3f}), "
            f"p_perm={result.p_permutation:.3g}, p_binom={result.p_binomial:.3g}")


def effect_size(result: HTTResult) -> float:
    """Cohen's h between held-out accuracy and chance."""
    return 2 * math.asin(math.sqrt(result.accuracy)) - 2 * math.asin(math.sqrt(result.chance))
