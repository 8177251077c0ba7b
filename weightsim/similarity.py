"""Weight similarity over whole solution sets (docs/method.md §4).

Every representation maps a stack of ``N`` networks (see ``chain.stack``) to an
``(N, D)`` matrix; similarity matrices are plain linear algebra on it:

=============  ===================================================  ==========================
name           representation                                       invariant to
=============  ===================================================  ==========================
``chain``      chain features (Gram blocks along the chain)         the whole symmetry group
``cka``        chain features with centred Grams: cosine = CKA      the group; input shifts
``canonical``  flattened ``chain.canonicalize`` weights             the group (up to key ties)
``scale``      flattened scale/sign-normalized weights, unsorted    scaling/sign only
``matched``    flattened weights after Hungarian weight matching    permutations (approx.)
               of every network to a reference network
``raw``        flattened raw weights                                nothing
=============  ===================================================  ==========================

Cosine similarity of rows is the similarity of two networks; linear CKA of
two networks' chain matrices equals the cosine of their centred Gram features.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from . import chain, streams
from .archs import RESIDUAL, ArchSpec, param_shapes
from .errors import SpecError

REPRESENTATIONS = ("chain", "cka", "canonical", "scale", "matched", "raw")
BLOCK_ROWS = 1024  # rows converted to float64 at a time


def _flat(s: chain.Stack, spec: ArchSpec) -> torch.Tensor:
    keys = [k for k in param_shapes(spec) if "running_" not in k and "num_batches" not in k]
    n = s[keys[0]].shape[0]
    return torch.cat([s[k].reshape(n, -1) for k in keys], 1)


def raw_features(s: chain.Stack, spec: ArchSpec) -> torch.Tensor:
    """(N, P) flattened parameters, no normalization."""
    return _flat(s, spec)


def scale_features(s: chain.Stack, spec: ArchSpec) -> torch.Tensor:
    """(N, P) flattened scale-normalized (ReLU) or sign-normalized (tanh) weights, not reordered."""
    return _flat(chain.scale_normalize_stack(s, spec), spec)


def canonical_features(s: chain.Stack, spec: ArchSpec) -> torch.Tensor:
    """(N, P) flattened canonical weights (the chain normalization rule)."""
    return _flat(chain.canonicalize_stack(s, spec), spec)


def match_to(s: chain.Stack, spec: ArchSpec, reference: chain.Stack) -> chain.Stack:
    """Weight matching: permute every network's hidden units, layer by layer
    from the input, to maximize the inner product of its incoming vectors with
    those of ``reference`` (one network, N = 1), solved exactly with the
    Hungarian algorithm (``scipy.optimize.linear_sum_assignment``), as the
    layer-wise weight matching of Git Re-Basin. BatchNorm is folded first.
    Residual families: ``streams.match_to`` (streams, blocks and heads)."""
    if spec.kind in RESIDUAL:
        return streams.match_to(s, spec, reference, chain.bounder())
    from scipy.optimize import linear_sum_assignment  # imported where used: it is slow to import

    s = chain._prepare(s, spec)
    ref = chain._prepare(reference, spec)
    for l in range(spec.depth):
        a = chain._incoming(ref, spec, l)[0]  # (h, d)
        b = chain._incoming(s, spec, l)  # (N, h, d), in coordinates already matched
        scores = torch.einsum("jd,nkd->njk", a, b).cpu().numpy()
        perm = torch.from_numpy(np.stack([linear_sum_assignment(c, maximize=True)[1] for c in scores]))
        s = chain.transform_layer(s, spec, l, perm.to(b.device), torch.ones(perm.shape, dtype=torch.float64,
                                                                            device=b.device), folded=True)
    return s


def weight_matching(state_dict_a: chain.StateDict, state_dict_b: chain.StateDict, spec: ArchSpec) -> chain.StateDict:
    """``state_dict_b`` with its units permuted to match ``state_dict_a`` (same function as b)."""
    s = match_to(chain.stack([state_dict_b], spec), spec, chain.stack([state_dict_a], spec))
    return chain.unstack(s, state_dict_b)


def matched_features(s: chain.Stack, spec: ArchSpec, reference: int | chain.Stack = 0) -> torch.Tensor:
    """(N, P) flattened weights after matching every network to ``reference``:
    network ``reference`` of ``s``, or a stack of one network."""
    ref = {k: v[reference:reference + 1] for k, v in s.items()} if isinstance(reference, int) else reference
    return _flat(match_to(s, spec, ref), spec)


def representation(s: chain.Stack, spec: ArchSpec, name: str, depth: int | None = None) -> torch.Tensor:
    """(N, D) matrix of representation ``name`` (see the module table)."""
    if name == "chain":
        return chain.features_stack(s, spec, depth)
    if name == "cka":
        return chain.features_stack(s, spec, depth, centered=True)
    funcs = {"canonical": canonical_features, "scale": scale_features, "matched": matched_features,
             "raw": raw_features}
    if name not in funcs:
        raise SpecError(f"unknown representation {name!r}: use one of {', '.join(REPRESENTATIONS)}")
    return funcs[name](s, spec)


def cosine_matrix(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, N) cosine similarity of the rows of ``x`` (N, D)."""
    x = _unit_rows(x)
    return (x @ x.T).cpu().numpy()


@dataclass(frozen=True)
class WithinBetween:
    """Within-problem vs between-problem similarity and its permutation test."""

    within_mean: float
    between_mean: float
    difference: float
    effect_size: float  # Cohen's d of within-pair vs between-pair similarities
    p_value: float  # (1 + #{permuted difference ≥ observed}) / (B + 1)
    n_permutations: int
    n_within_pairs: int
    n_between_pairs: int

    def to_dict(self) -> dict:
        return asdict(self)


def _unit_rows(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)


@dataclass(frozen=True)
class _Labelling:
    """What both forms of the within/between test share: the problem labels
    as codes, the pairs they make, the permuted labellings of the null
    (``n_permutations`` draws of one seeded generator, in order) and the
    result built from the means, the pooled deviation and the count of
    permutations at least as extreme."""

    codes: np.ndarray  # (N,) problem index of each network
    counts: np.ndarray  # (k,) networks per problem

    @classmethod
    def of(cls, labels: Sequence) -> "_Labelling":
        _, codes = np.unique(np.asarray(labels), return_inverse=True)
        counts = np.bincount(codes)
        if len(counts) < 2 or counts.max() < 2:
            raise SpecError("need at least 2 problems and 2 networks in some problem")
        return cls(codes, counts)

    @property
    def n_within(self) -> int:  # ordered same-problem pairs i ≠ j
        return int((self.counts ** 2).sum() - len(self.codes))

    @property
    def n_between(self) -> int:  # ordered pairs of different problems
        n = len(self.codes)
        return n * (n - 1) - self.n_within

    def permutations(self, n_permutations: int, seed: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        return (rng.permutation(self.codes) for _ in range(n_permutations))

    def result(self, w_mean: float, b_mean: float, pooled: float, exceed: int, n_permutations: int,
               sign: float = 1.0) -> WithinBetween:
        """Means in the test's orientation (``sign`` -1: of a negated distance,
        reported back as distances; Cohen's d stays positive when closer within)."""
        return WithinBetween(sign * w_mean, sign * b_mean, sign * (w_mean - b_mean),
                             float((w_mean - b_mean) / pooled) if pooled > 0 else float("inf"),
                             (1 + exceed) / (n_permutations + 1), n_permutations, self.n_within // 2,
                             self.n_between // 2)


def within_between(x: torch.Tensor | np.ndarray, labels: Sequence[int], n_permutations: int = 1000,
                   seed: int = 0) -> WithinBetween:
    """Is the cosine similarity of two networks' representations ``x`` (N, D)
    higher within problems than between them? One-sided permutation test
    that shuffles the problem labels of the networks ``n_permutations``
    times.

    Memory stays within the size of ``x``: when N ≤ 2D the (N, N) cosine
    matrix (float32) is formed once and each labelling reads only its
    same-problem entries; otherwise each labelling is one pass over ``x``,
    using that the within-problem sum is ``Σ_k ‖Σ_{i∈k} x̂_i‖² − N`` (unit
    rows ``x̂``). Sums are taken in float64 from float32 products; the
    reported means are exact (float64)."""
    x = torch.as_tensor(x)
    n = len(labels)
    if x.ndim != 2 or len(x) != n or n < 3:
        raise SpecError(f"representations {tuple(x.shape)} do not match {n} labels (need >= 3 networks)")
    lab = _Labelling.of(labels)
    codes, counts, n_within, n_between = lab.codes, lab.counts, lab.n_within, lab.n_between
    k = len(counts)
    norms = x.double().norm(dim=1, keepdim=True).clamp_min(1e-300)
    class_sums = torch.zeros(k, x.shape[1], dtype=torch.float64)  # exact (float64), a block of rows at a time
    for lo in range(0, n, BLOCK_ROWS):
        class_sums.index_add_(0, torch.from_numpy(codes[lo:lo + BLOCK_ROWS]),
                              x[lo:lo + BLOCK_ROWS].double() / norms[lo:lo + BLOCK_ROWS])
    total = float(class_sums.sum(0).pow(2).sum()) - n  # Σ_{i≠j} s_ij
    w_obs = float(class_sums.pow(2).sum()) - n
    x32 = (x / norms.to(x.dtype)).float()
    perms = lab.permutations(n_permutations, seed)
    if n <= 2 * x.shape[1]:  # the (N, N) Gram in float32 is no larger than x: read Σ n_k² entries per labelling
        gram = x32 @ x32.T
        starts = np.concatenate([[0], np.cumsum(counts)])
        pa = np.concatenate([np.repeat(np.arange(a, b), b - a) for a, b in zip(starts[:-1], starts[1:])])
        pb = np.concatenate([np.tile(np.arange(a, b), b - a) for a, b in zip(starts[:-1], starts[1:])])

        def same_pairs(c: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:  # (i, j) with c_i = c_j, self-pairs too
            order = torch.from_numpy(np.argsort(c, kind="stable"))
            return order[pa], order[pb]

        def within_sum(c: np.ndarray) -> float:
            return float(gram[same_pairs(c)].double().sum()) - n

        sq_all = sum(float(gram[lo:lo + BLOCK_ROWS].double().pow(2).sum()) for lo in range(0, n, BLOCK_ROWS)) - n
        sq_within = float(gram[same_pairs(codes)].double().pow(2).sum()) - n
    else:  # one pass over x per labelling: the class sums
        def within_sum(c: np.ndarray) -> float:
            sums = torch.zeros(k, x32.shape[1], dtype=x32.dtype).index_add_(0, torch.from_numpy(c), x32)
            return float(sums.double().pow(2).sum()) - n

        def sum_sq(rows: torch.Tensor) -> float:  # Σ_{i,j} s_ij² = ‖XᵀX‖_F²
            return float((rows.T @ rows).double().pow(2).sum())

        sq_all = sum_sq(x32) - n
        sq_within = sum(sum_sq(x32[torch.from_numpy(np.flatnonzero(codes == c))]) for c in range(k)) - n

    def difference(w: float) -> float:
        return w / n_within - (total - w) / n_between

    observed = difference(within_sum(codes))  # in the same float32 arithmetic as every permutation
    tol = 1e-6 * max(abs(observed), 1e-3)
    exceed = sum(difference(within_sum(c)) >= observed - tol for c in perms)
    w_mean, b_mean = w_obs / n_within, (total - w_obs) / n_between
    w_pairs, b_pairs = n_within // 2, n_between // 2

    def variance(sum_sq: float, mean: float, m: int) -> float:  # unbiased, from Σ s² over ordered pairs
        return max(sum_sq / 2 - m * mean ** 2, 0.0) / max(m - 1, 1)

    pooled = math.sqrt((variance(sq_within, w_mean, w_pairs) + variance(sq_all - sq_within, b_mean, b_pairs)) / 2) \
        if w_pairs > 1 else 0.0
    return lab.result(w_mean, b_mean, pooled, exceed, n_permutations)


def within_between_matrix(s: np.ndarray, labels: Sequence, n_permutations: int = 1000, seed: int = 0,
                          distance: bool = False) -> WithinBetween:
    """``within_between`` on a precomputed (N, N) symmetric matrix of a
    pairwise similarity (or, with ``distance``, a distance: the test then
    asks whether within-problem distances are *smaller*, and the means
    reported are distances, while Cohen's d stays positive when problems
    are closer within). Diagonal entries are ignored. Each labelling costs
    one (N, N) × (N, k) product."""
    n = len(labels)
    if np.shape(s) != (n, n) or n < 3:
        raise SpecError(f"a ({n}, {n}) matrix is needed for {n} labels (need >= 3 networks); got {np.shape(s)}")
    lab = _Labelling.of(labels)
    codes, counts, n_within, n_between = lab.codes, lab.counts, lab.n_within, lab.n_between
    sign = -1.0 if distance else 1.0
    m = torch.as_tensor(np.asarray(s, np.float64)) * sign
    m = m - torch.diag(m.diagonal())
    total = float(m.sum())
    labellings = np.stack([codes, *lab.permutations(n_permutations, seed)])
    onehot = torch.zeros(len(labellings), n, len(counts), dtype=torch.float64)
    onehot.scatter_(2, torch.from_numpy(labellings)[:, :, None], 1.0)
    within = ((m @ onehot) * onehot).sum((1, 2))  # Σ over same-label pairs, per labelling
    diff = within / n_within - (total - within) / n_between
    observed = float(diff[0])
    exceed = int((diff[1:] >= observed - 1e-12 * max(abs(observed), 1.0)).sum())
    same = torch.from_numpy(codes[:, None] == codes[None, :]) & ~torch.eye(n, dtype=torch.bool)
    other = ~torch.from_numpy(codes[:, None] == codes[None, :])
    w_vals, b_vals = m[same], m[other]
    pooled = math.sqrt((float(w_vals.var()) + float(b_vals.var())) / 2) if len(w_vals) > 1 else 0.0
    return lab.result(float(w_vals.mean()), float(b_vals.mean()), pooled, exceed, n_permutations, sign)


def subsample_per_problem(labels: Sequence, limit: int, min_per: int = 1) -> np.ndarray:
    """Indices of about ``limit`` runs, stratified: the same number from
    every sampled problem (the first of each, in order), at least
    ``min_per`` of each. When ``limit`` cannot hold ``min_per`` runs of
    every problem, ``max(2, limit // min_per)`` problems are sampled, evenly
    spread over them; problems with fewer than ``min_per`` runs are left
    out. The result has at most ``max(limit, 2 * min_per)`` runs."""
    y = np.asarray(labels)
    problems = [p for p in dict.fromkeys(y.tolist()) if (y == p).sum() >= min_per]
    per = max(min_per, limit // max(len(problems), 1))
    n_problems = min(len(problems), max(2, limit // per))
    chosen = [problems[i] for i in np.linspace(0, len(problems) - 1, n_problems).round().astype(int)] \
        if n_problems < len(problems) else problems
    if not chosen:
        return np.zeros(0, int)
    return np.concatenate([np.flatnonzero(y == p)[:per] for p in chosen])


def describe_sample(labels: Sequence, sample: np.ndarray) -> str:
    """What ``subsample_per_problem`` took, in words: e.g. ``2 runs of each
    of 60 of 70 problems (120 runs)``."""
    y = np.asarray(labels)
    counts = np.unique(y[sample], return_counts=True)[1]
    per = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}–{counts.max()}"
    return (f"{per} runs of each of {len(counts)} of {len(np.unique(y))} problems ({len(sample)} of {len(y)} "
            f"runs)")
