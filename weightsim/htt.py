"""Hypothesis-training-testing and retrieval on weight representations (docs/method.md §5).

H1: networks trained on the same problem converge to similar solutions, so a
network's problem is recoverable from its (normalized) weights even for
networks never seen in training. H0: held-out accuracy is at chance.

``hypothesis_training_testing`` splits the runs per problem (never one run on
both sides, nor runs that share an initialization) and fits the weight-representation model on the training side
only: ``MODEL`` below. The model is a *linear smoother*: its held-out scores
are ``H Y`` for a hat matrix ``H`` that depends on the representations alone,
never on the labels ``Y``. The label-permutation null re-fits the same model
on permuted training labels, so one ``H`` (one SVD) serves the observed labels
and all ``B`` permutations: the null costs one matrix product, and observed
statistic and null come from exactly the same procedure.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import design
from .design import ALPHA, DesignFloor, split_sizes
from .errors import SpecError
from .seeding import seeded

CI_LEVEL = 1 - ALPHA  # matches the decision level
MAX_COMPONENTS = 256  # principal coordinates kept (all of them when the training side has fewer)
RIDGE = 1.0  # λ in units of the mean squared singular value of the kept coordinates
PERMUTATION_BLOCK = 64  # labellings of the permutation null scored at once (its memory: one block's scores)
MODEL = (f"ridge classifier (least squares on one-hot problem labels, with intercept) on the first "
         f"≤{MAX_COMPONENTS} principal coordinates of the training runs' standardized representations, "
         f"λ = {RIDGE:g} × their mean eigenvalue; the permutation null re-fits it on shuffled training labels")


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

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p_permutation <= alpha and self.p_binomial <= alpha


def init_blocks(inits: np.ndarray | None) -> np.ndarray | None:
    """Permutation blocks from initialization labels ``inits`` (N,) (equal
    labels: identical epoch-0 tensors, ``weightsim.inits``): (N,) codes,
    each shared initialization its own code ≥ 1, runs sharing none 0; None
    when no initialization is shared (nothing to group)."""
    if inits is None:
        return None
    _, group, counts = np.unique(np.asarray(inits), return_inverse=True, return_counts=True)
    shared = counts[group] > 1
    return np.where(shared, group + 1, 0) if shared.any() else None


def split_per_problem(y: np.ndarray, train_fraction: float, seed: int,
                      blocks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train mask: per problem a seeded ``train_fraction`` of its runs
    (at least one on each side). With ``blocks`` (``init_blocks``) the runs
    of a shared initialization are all on one side: ``_grouped_split``."""
    rng = np.random.default_rng(seed)
    sizes = {c: int(n) for c, n in zip(*np.unique(y, return_counts=True))}
    short = next((c for c, n in sizes.items() if n < 2), None)
    if short is not None:
        raise SpecError(f"problem {short} has {sizes[short]} run(s): need at least 2 to train and test")
    if blocks is not None:
        return _grouped_split(y, blocks, train_fraction, rng)
    train = np.zeros(len(y), bool)
    for c in sizes:
        idx = rng.permutation(np.flatnonzero(y == c))
        train[idx[:split_sizes(len(idx), train_fraction)[0]]] = True
    return train, ~train


def _grouped_split(y: np.ndarray, blocks: np.ndarray, train_fraction: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The split of ``split_per_problem`` in units of a shared initialization
    (or one run): units in a seeded order, larger first, join the training
    side while no problem passes its ``split_sizes`` share."""
    problems, codes = np.unique(y, return_inverse=True)
    _, unit = np.unique(np.where(blocks > 0, blocks, -1 - np.arange(len(y))), return_inverse=True)
    counts = np.zeros((unit.max() + 1, len(problems)), int)  # (units, problems): runs of each
    np.add.at(counts, (unit, codes), 1)
    target = np.array([split_sizes(int(n), train_fraction)[0] for n in counts.sum(0)])
    have, chosen = np.zeros(len(problems), int), np.zeros(len(counts), bool)
    for u in np.lexsort((rng.random(len(counts)), -counts.sum(1))):
        if (have + counts[u] <= target).all():
            chosen[u], have = True, have + counts[u]
    if (have == 0).any():
        raise SpecError(f"problem {problems[np.argmin(have)]}: every run shares its initialization with runs "
                        f"that fill another problem's training side; no split keeps the shared inits together")
    train = chosen[unit]
    return train, ~train


def split_floor(y: np.ndarray, *, inits: np.ndarray | None = None, train_fraction: float = 0.6,
                n_permutations: int = 200, seed: int = 0, alpha: float = ALPHA) -> DesignFloor:
    """The smallest p-values (``design.split_floor``) of the split that
    ``hypothesis_training_testing`` makes of runs with problems ``y`` (N,)
    and initializations ``inits``."""
    _, codes = np.unique(y, return_inverse=True)
    blocks = init_blocks(inits)
    train, test = split_per_problem(codes, train_fraction, seed, blocks)
    b = np.zeros(len(codes), int) if blocks is None else blocks
    per_block = np.zeros((b.max() + 1, codes.max() + 1), int)
    np.add.at(per_block, (b[train], codes[train]), 1)
    return design.split_floor(per_block[per_block.sum(1) > 0].tolist(),
                              np.bincount(codes[test], minlength=codes.max() + 1).tolist(), n_permutations, alpha)


def _shuffle(rng: np.random.Generator, blocks: np.ndarray | None, n: int) -> np.ndarray:
    """A random permutation of ``n`` training runs; with ``blocks`` (n,)
    one that moves labels only within each block."""
    if blocks is None:
        return rng.permutation(n)
    perm = np.empty(n, int)
    perm[np.argsort(blocks, kind="stable")] = np.lexsort((rng.random(n), blocks))
    return perm


@dataclass(frozen=True)
class Principal:
    """Standardization and principal axes fit on training rows only.

    ``transform(x)`` (m, D) → (m, r) coordinates; the training rows' own
    coordinates are ``u * singular`` with orthonormal, centred ``u`` (n, r)."""

    mean: torch.Tensor  # (D,)
    scale: torch.Tensor  # (D,)
    axes: torch.Tensor  # (D, r)
    singular: torch.Tensor  # (r,)
    u: torch.Tensor  # (n, r)

    def transform(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        return ((x - self.mean) / self.scale) @ self.axes


def principal(x_train: np.ndarray | torch.Tensor, max_components: int = MAX_COMPONENTS, seed: int = 0) -> Principal:
    """Standardize ``x_train`` (n, D) per column and keep its first
    ``max_components`` principal axes (exact SVD when the rank allows all of
    them, else a seeded randomized SVD). Constant columns are left unscaled."""
    a = torch.as_tensor(x_train).to(torch.float64, copy=True)  # standardized in place: one copy of the rows
    mean = a.mean(0)
    a -= mean
    scale = torch.linalg.vector_norm(a, dim=0) / math.sqrt(max(len(a), 1))
    scale = torch.where(scale > 1e-12 * max(float(scale.max()) if scale.numel() else 0.0, 1e-300), scale,
                        torch.ones_like(scale))
    a /= scale
    n, d = a.shape
    if min(n, d) <= 2 * max_components:
        u, s, vt = torch.linalg.svd(a, full_matrices=False)
        v = vt.T
    else:  # randomized, in float32 (a basis chosen without the labels: any basis keeps the test exact)
        with seeded(seed):
            _, _, v = torch.svd_lowrank(a.float(), q=max_components + 16, niter=2)
        z = a @ v.double()[:, :max_components]  # the coordinates, and from them an exact thin SVD in float64
        u, s, wt = torch.linalg.svd(z, full_matrices=False)
        v = v.double()[:, :max_components] @ wt.T
    keep = (s > 1e-10 * max(float(s.max()) if len(s) else 0.0, 1e-300)).nonzero().flatten()[:max_components]
    return Principal(mean, scale, v[:, keep].contiguous(), s[keep].contiguous(), u[:, keep].contiguous())


def ridge_scores(p: Principal, labels: torch.Tensor, z_test: torch.Tensor, k: int,
                 ridge: float = RIDGE) -> torch.Tensor:
    """Held-out class scores of the ridge classifier for each row of
    ``labels`` (B, n) (training label codes, same class counts in every row:
    permutations of one labelling): (B, m, k). One hat matrix for all rows."""
    s = p.singular
    lam = ridge * float(s.pow(2).mean()) if len(s) else 1.0
    hat = z_test * (s / (s.pow(2) + lam))  # (m, r): scores = hat @ uᵀ Y + ȳ
    prior = torch.bincount(labels[0], minlength=k).to(torch.float64) / labels.shape[1]
    # uᵀY per labelling: the class sums of u's rows (Y one-hot), (B, k, r)
    g = torch.stack([torch.zeros(k, p.u.shape[1], dtype=torch.float64).index_add_(0, row, p.u) for row in labels])
    return hat @ g.transpose(1, 2) + prior


def binomial_p(hits: int, n: int, chance: float) -> float:
    """Exact one-sided binomial p-value of ``hits`` right out of ``n`` at ``chance``."""
    from scipy import stats  # imported where used: a command with nothing to compute never pays for it

    return float(stats.binomtest(hits, n, chance, alternative="greater").pvalue)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """McNemar's exact test: two-sided binomial at ½ on the discordant cases
    (1 when there are none)."""
    from scipy import stats

    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0


def clopper_pearson(k: int, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    from scipy import stats

    a = (1 - level) / 2
    lo = stats.beta.ppf(a, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(1 - a, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def hypothesis_training_testing(X, y, *, train_fraction: float = 0.6, n_permutations: int = 200,
                                seed: int = 0, inits: np.ndarray | None = None) -> HTTResult:
    """Held-out problem classification from weight representations.

    ``X`` (N, D) representations of N runs, ``y`` (N,) their problems; the
    model is ``MODEL``. Returns accuracy, chance (majority-class rate of the
    test side), the one-sided binomial p-value against chance, the
    permutation p-value ``(1 + #{permuted ≥ observed}) / (B + 1)`` (so never
    below ``1/(B+1)``), a Clopper–Pearson interval at ``CI_LEVEL`` and the
    confusion matrix. The permutation test orders labellings by held-out
    accuracy, ties broken by the mean held-out score of the true problem:
    a relabelling that keeps each problem's majority no longer ties a
    perfect classification, only one equal to the observed labelling does
    (``weightsim.design``). ``inits`` (N,): initialization labels; runs that
    share one are kept on one side of the split and the null shuffles
    labels within them (``init_blocks``); without shared ones, no change."""
    X = torch.as_tensor(np.asarray(X) if not torch.is_tensor(X) else X)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise SpecError(f"X must be (N, D) with N = len(y); got {tuple(X.shape)} and {len(y)} labels")
    if not torch.isfinite(X).all():
        raise SpecError("X contains NaN or inf")
    if not 0 < train_fraction < 1 or n_permutations < 0:
        raise SpecError("need 0 < train_fraction < 1 and n_permutations >= 0")
    classes, codes = np.unique(y, return_inverse=True)
    k = len(classes)
    if k < 2:
        raise SpecError("need runs of at least 2 problems")
    blocks = init_blocks(inits)
    train, test = split_per_problem(codes, train_fraction, seed, blocks)
    y_te = codes[test]
    pred, accs, scores = _statistics(X, codes, train, test, n_permutations, seed,
                                     blocks=None if blocks is None else blocks[train])
    acc, score = float(accs[0]), float(scores[0])
    n_test = int(test.sum())
    hits = int(round(acc * n_test))
    chance = float(np.bincount(y_te, minlength=k).max() / n_test)
    p_binom = binomial_p(hits, n_test, chance)
    tol = 1e-12 * max(1.0, abs(score))
    at_least = (accs[1:] > acc + 1e-12) | ((accs[1:] >= acc - 1e-12) & (scores[1:] >= score - tol))
    p_perm = float((1 + np.sum(at_least)) / (n_permutations + 1))
    confusion = np.zeros((k, k), int)
    np.add.at(confusion, (y_te, pred), 1)
    lo, hi = clopper_pearson(hits, n_test)
    return HTTResult(acc, chance, p_binom, p_perm, int(train.sum()), n_test, lo, hi, n_permutations,
                     [c.item() if hasattr(c, "item") else c for c in classes], confusion.tolist())


def _statistics(X: torch.Tensor, codes: np.ndarray, train: np.ndarray, test: np.ndarray, n_permutations: int,
                seed: int, block: int | None = None, blocks: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model fit on the real training labels, then on ``n_permutations``
    seeded shuffles of them: (predicted codes of the test runs under the
    real labels (n_test,), held-out accuracy (1 + B,), mean held-out score of
    the true problem (1 + B,)). The labellings are scored ``block`` (default
    ``PERMUTATION_BLOCK``) at a time, so memory does not grow with B;
    ``blocks`` (n_train,): the shuffles move labels within blocks only."""
    block = block or PERMUTATION_BLOCK
    p = principal(X[torch.from_numpy(train)], seed=seed)
    z_te = p.transform(X[torch.from_numpy(test)])
    y_tr = torch.from_numpy(codes[train])
    y_te = torch.from_numpy(codes[test])
    k = int(codes.max()) + 1
    rng = np.random.default_rng(seed + 1)
    accs, scores, pred = [], [], None
    for start in range(0, 1 + n_permutations, block):
        rows = [y_tr if i == 0 else y_tr[torch.from_numpy(_shuffle(rng, blocks, len(y_tr)))]
                for i in range(start, min(start + block, 1 + n_permutations))]
        s = ridge_scores(p, torch.stack(rows), z_te, k)  # (b, m, k)
        guess = s.argmax(-1)
        pred = guess[0].numpy() if pred is None else pred
        accs.append((guess == y_te).double().mean(1))
        scores.append(s.gather(2, y_te.expand(len(rows), -1)[..., None]).squeeze(-1).mean(1))
    return pred, torch.cat(accs).numpy(), torch.cat(scores).numpy()


def paired_comparison(X_a, X_b, y, *, train_fraction: float = 0.6, seed: int = 0,
                      inits: np.ndarray | None = None) -> dict:
    """Which of two representations of the same runs recovers the problem
    better: both models fit on the same training runs and tested on the same
    held-out runs (the split of ``hypothesis_training_testing``), compared
    with McNemar's exact test on the runs only one of them gets right
    (two-sided binomial on the discordant runs). Returns ``accuracy_a``,
    ``accuracy_b``, ``n_test``, ``only_a``, ``only_b``, ``p_mcnemar``."""
    y = np.asarray(y)
    _, codes = np.unique(y, return_inverse=True)
    train, test = split_per_problem(codes, train_fraction, seed, init_blocks(inits))
    right = [(_statistics(torch.as_tensor(np.asarray(x)), codes, train, test, 0, seed)[0] == codes[test])
             for x in (X_a, X_b)]
    only_a, only_b = int((right[0] & ~right[1]).sum()), int((right[1] & ~right[0]).sum())
    p = mcnemar_p(only_a, only_b)
    return {"accuracy_a": float(right[0].mean()), "accuracy_b": float(right[1].mean()), "n_test": int(test.sum()),
            "only_a": only_a, "only_b": only_b, "p_mcnemar": p}


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


def chance_retrieval(relevant: np.ndarray, ranks: Sequence[int]) -> tuple[dict, float]:
    """Exact chance levels of a uniformly random ranking, averaged over the
    queries: CMC at each rank, 1 − C(G−m, r)/C(G, r), and mAP,
    H_G/G + (m−1)(G − H_G)/(G(G−1)) (H_G the harmonic number), for a
    query with m of G gallery runs relevant. ``relevant`` (Q, G)."""
    g = relevant.shape[1]
    m = relevant.sum(1)
    cmc = {int(r): float(np.mean([1 - math.comb(g - int(k), r) / math.comb(g, r) for k in m])) for r in ranks}
    h = sum(1 / i for i in range(1, g + 1))
    ap = np.where(m > 0, h / g + (m - 1) * (g - h) / (g * max(g - 1, 1)), 0.0)
    return cmc, float(ap.mean())


def retrieval(X, y, *, train_fraction: float = 0.5, ranks: tuple[int, ...] = (1, 5, 10),
              seed: int = 0) -> RetrievalResult:
    """Fit a linear embedding (standardize → principal coordinates → LDA) on a
    seeded ``train_fraction`` of the problems; on every other problem, half
    of its runs are queries and half the gallery; rank the gallery by cosine
    similarity in the embedding, ties in a seeded random order (the
    embedding has fewer dimensions than fitted problems, so with few
    problems ties are common, and the gallery is grouped by problem). CMC
    at ``ranks`` (those a random ranking does not always reach) and mAP,
    with their exact chance levels (``chance_retrieval``)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    X = np.asarray(X)
    y = np.asarray(y)
    problems = np.unique(y)
    if len(problems) < 4:
        raise SpecError("retrieval needs at least 4 problems (2 to fit, 2 unseen)")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(problems)
    n_fit = min(max(2, int(round(train_fraction * len(problems)))), len(problems) - 2)
    fit_p, test_p = np.sort(shuffled[:n_fit]), np.sort(shuffled[n_fit:])
    fit = np.isin(y, fit_p)
    p = principal(X[fit], seed=seed)
    lda = LinearDiscriminantAnalysis().fit((p.u * p.singular).numpy(), y[fit])
    emb = lda.transform(p.transform(X[~fit]).numpy())
    y_rest = y[~fit]
    query = np.zeros(len(y_rest), bool)
    for p in test_p:
        idx = rng.permutation(np.flatnonzero(y_rest == p))
        query[idx[: len(idx) // 2]] = True
    q, g = emb[query], emb[~query]
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-300)
    gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)
    sim = np.round(qn @ gn.T, 12)  # equal up to rounding: a tie
    order = np.lexsort((rng.random(sim.shape), -sim), axis=1)
    same = y_rest[query][:, None] == y_rest[~query][None, :]
    ranked = np.take_along_axis(same, order, 1)
    irrelevant = int((~same).sum(1).min())
    ranks = [r for r in ranks if r <= irrelevant] or [1]  # beyond: every ranking has a relevant run in its top r
    chance, chance_map = chance_retrieval(same, ranks)
    cmc = {int(r): float(ranked[:, :r].any(1).mean()) for r in ranks}
    return RetrievalResult(cmc, float(_average_precision(ranked).mean()), chance, chance_map, int(query.sum()),
                           int((~query).sum()), fit_p.tolist(), test_p.tolist())


def cross_test(X_fit, y_fit, X_eval, y_eval) -> dict:
    """The representation model (``MODEL``) fit on one solution set (all its
    runs), evaluated on another with the same problems: accuracy, chance and
    binomial p-value."""
    X_fit, X_eval = np.asarray(X_fit), np.asarray(X_eval)
    if X_fit.shape[1] != X_eval.shape[1]:
        raise SpecError(f"cross test needs features of equal size ({X_fit.shape[1]} vs {X_eval.shape[1]})")
    classes = np.unique(y_fit)
    lookup = {v: i for i, v in enumerate(classes.tolist())}
    keep = np.isin(y_eval, classes)
    if not keep.any():
        raise SpecError("cross test: the two solution sets share no problem")
    p = principal(X_fit)
    y_codes = torch.tensor([lookup[v] for v in np.asarray(y_fit).tolist()])
    pred = ridge_scores(p, y_codes[None], p.transform(X_eval[keep]), len(classes))[0].argmax(-1).numpy()
    truth = np.array([lookup[v] for v in np.asarray(y_eval)[keep].tolist()])
    hits, n = int((pred == truth).sum()), int(keep.sum())
    chance = float(np.bincount(truth, minlength=len(classes)).max() / n)
    return {"accuracy": hits / n, "chance": chance, "n_test": n,
            "p_binomial": binomial_p(hits, n, chance)}


def decision(result: HTTResult, alpha: float = ALPHA) -> str:
    """'reject H0' / 'keep H0' at level ``alpha``, with the effect size."""
    gain = result.accuracy - result.chance
    verdict = "reject H0" if result.significant(alpha) else "keep H0"
    return (f"{verdict} at α={alpha:g}: held-out accuracy {result.accuracy:.3f} vs chance {result.chance:.3f} "
            f"(+{gain:.3f}; {CI_LEVEL:.0%} CI {result.ci_low:.3f}–{result.ci_high:.3f}), "
            f"p_perm={result.p_permutation:.3g}, p_binom={result.p_binomial:.3g}")


def holm(pvalues: dict, alpha: float) -> dict:
    """Holm's step-down procedure: name → rejected, with family-wise error
    at most ``alpha`` over all the names."""
    order = sorted(pvalues, key=pvalues.get)
    out, stop = {}, False
    for i, name in enumerate(order):
        stop = stop or pvalues[name] > alpha / (len(order) - i)
        out[name] = not stop
    return out


def effect_size(result: HTTResult) -> float:
    """Cohen's h between held-out accuracy and chance."""
    return 2 * math.asin(math.sqrt(result.accuracy)) - 2 * math.asin(math.sqrt(result.chance))
