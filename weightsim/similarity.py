"""Weight similarity over whole solution sets (METHOD.md §4).

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from . import chain
from .archs import ArchSpec, param_shapes
from .errors import SpecError

REPRESENTATIONS = ("chain", "cka", "canonical", "scale", "matched", "raw")


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
    layer-wise weight matching of Git Re-Basin. BatchNorm is folded first."""
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


def within_between(x: torch.Tensor | np.ndarray, labels: Sequence[int], n_permutations: int = 1000, seed: int = 0,
                   block: int = 1024) -> WithinBetween:
    """Is the cosine similarity of two networks' representations ``x`` (N, D)
    higher within problems than between them? One-sided permutation test
    that shuffles the problem labels of the networks ``n_permutations``
    times.

    Never forms the (N, N) matrix: with unit rows ``x̂``, the sum of the
    within-problem similarities is ``Σ_k ‖Σ_{i∈k} x̂_i‖² − N``, so each
    permutation costs one pass over ``x`` (linear in N); the pair variances
    for Cohen's d come from blocks of ``block`` rows."""
    xs = _unit_rows(x)
    y = np.asarray(labels)
    n = len(y)
    if xs.ndim != 2 or len(xs) != n or n < 3:
        raise SpecError(f"representations {tuple(xs.shape)} do not match {n} labels (need >= 3 networks)")
    _, codes = np.unique(y, return_inverse=True)
    k = int(codes.max()) + 1
    counts = np.bincount(codes)
    if k < 2 or counts.max() < 2:
        raise SpecError("need at least 2 problems and 2 networks in some problem")
    n_within = int((counts ** 2).sum() - n)
    n_between = n * (n - 1) - n_within
    total = float(xs.sum(0).pow(2).sum()) - n  # Σ_{i≠j} s_ij

    def within_sum(c: np.ndarray) -> float:
        sums = torch.zeros(k, xs.shape[1], dtype=torch.float64).index_add_(0, torch.from_numpy(c), xs)
        return float(sums.pow(2).sum()) - n

    def difference(w: float) -> float:
        return w / n_within - (total - w) / n_between

    w_obs = within_sum(codes)
    observed = difference(w_obs)
    rng = np.random.default_rng(seed)
    exceed = sum(difference(within_sum(rng.permutation(codes))) >= observed - 1e-12 for _ in range(n_permutations))
    # pair sums of squares (unordered pairs) for the pooled standard deviation
    sq_all = sq_within = 0.0
    t_codes = torch.from_numpy(codes)
    for lo in range(0, n, block):
        sim = xs[lo:lo + block] @ xs.T
        sim[torch.arange(len(sim)), torch.arange(lo, lo + len(sim))] = 0.0
        sq = sim.pow(2)
        sq_all += float(sq.sum())
        sq_within += float(sq[t_codes[lo:lo + block, None] == t_codes[None, :]].sum())
    w_mean, b_mean = w_obs / n_within, (total - w_obs) / n_between
    w_pairs, b_pairs = n_within // 2, n_between // 2

    def variance(sum_sq: float, mean: float, m: int) -> float:  # unbiased, from Σ s² over ordered pairs
        return max(sum_sq / 2 - m * mean ** 2, 0.0) / max(m - 1, 1)

    pooled = math.sqrt((variance(sq_within, w_mean, w_pairs) + variance(sq_all - sq_within, b_mean, b_pairs)) / 2) \
        if w_pairs > 1 else 0.0
    return WithinBetween(w_mean, b_mean, w_mean - b_mean,
                         float((w_mean - b_mean) / pooled) if pooled > 0 else float("inf"),
                         (1 + exceed) / (n_permutations + 1), n_permutations, w_pairs, b_pairs)


def subsample_per_problem(labels: Sequence, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` runs, the same number from every problem
    (the first of each, in order): what a similarity heatmap can show."""
    y = np.asarray(labels)
    problems = list(dict.fromkeys(y.tolist()))
    per = max(1, limit // max(len(problems), 1))
    return np.concatenate([np.flatnonzero(y == p)[:per] for p in problems])
