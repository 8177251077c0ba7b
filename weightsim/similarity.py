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


def matched_features(s: chain.Stack, spec: ArchSpec, reference: int = 0) -> torch.Tensor:
    """(N, P) flattened weights after matching every network to network ``reference``."""
    ref = {k: v[reference:reference + 1] for k, v in s.items()}
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
    x = torch.as_tensor(x, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
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


def within_between(sim: np.ndarray, labels: Sequence[int], n_permutations: int = 1000, seed: int = 0,
                   chunk: int = 64) -> WithinBetween:
    """Is similarity within problems higher than between them? One-sided
    permutation test that shuffles the problem labels of the networks
    (``n_permutations`` times, vectorized in chunks)."""
    sim = np.asarray(sim, dtype=np.float64)
    y = np.asarray(labels)
    n = len(y)
    if sim.shape != (n, n) or n < 3:
        raise SpecError(f"similarity matrix {sim.shape} does not match {n} labels (need >= 3 networks)")
    _, codes = np.unique(y, return_inverse=True)
    k = codes.max() + 1
    if k < 2 or np.bincount(codes).max() < 2:
        raise SpecError("need at least 2 problems and 2 networks in some problem")
    off = sim - np.diag(np.diag(sim))
    total = off.sum()
    n_within = int((np.bincount(codes) ** 2).sum() - n)
    n_between = n * (n - 1) - n_within
    s_t = torch.from_numpy(off)

    def diffs(code_rows: np.ndarray) -> np.ndarray:  # (B, N) label codes → (B,) within − between
        onehot = torch.nn.functional.one_hot(torch.from_numpy(code_rows), k).to(torch.float64)
        w = torch.einsum("bnk,nm,bmk->b", onehot, s_t, onehot).numpy()
        return w / n_within - (total - w) / n_between

    observed = float(diffs(codes[None])[0])
    rng = np.random.default_rng(seed)
    exceed = 0
    for start in range(0, n_permutations, chunk):
        b = min(chunk, n_permutations - start)
        perms = np.stack([rng.permutation(codes) for _ in range(b)])
        exceed += int((diffs(perms) >= observed - 1e-12).sum())
    same = codes[:, None] == codes[None, :]
    iu = np.triu_indices(n, 1)
    w_vals, b_vals = sim[iu][same[iu]], sim[iu][~same[iu]]
    pooled = np.sqrt((w_vals.var(ddof=1) + b_vals.var(ddof=1)) / 2) if len(w_vals) > 1 else 0.0
    within_mean = float(w_vals.mean())
    between_mean = float(b_vals.mean())
    return WithinBetween(within_mean, between_mean, within_mean - between_mean,
                         float((within_mean - between_mean) / pooled) if pooled > 0 else float("inf"),
                         (1 + exceed) / (n_permutations + 1), n_permutations, len(w_vals), len(b_vals))
