"""Function-based representations: what networks compute on a fixed probe
set, beside what their weights are (``similarity``, ``chain``).

Probe inputs (``probes``) are handed in: ``P`` examples of the dataset's
test split, the same for every run of a solution set (of every problem).

For a stack of ``N`` networks:

- ``activation_features`` (N, L·P(P+1)/2 + P·C): per hidden layer ``l`` the
  upper triangle of the Gram matrix ``G_l = H_l H_lᵀ / units`` of its
  activations ``H_l`` (P, units) over the probes, then the logits (P, C).
  The network is first scale-normalized (``chain.scale_normalize_stack``, a
  function-preserving reparametrization), so the Grams are exactly invariant
  to permutations of hidden units, to their positive rescaling (ReLU) and to
  sign flips (tanh: a flipped unit's products keep their sign).
  Hidden activations: units for mlp, each channel's mean over the feature map
  for cnn, every step's hidden state for rnn/gru (``forward.forward``'s taps).
- ``debiased_cka`` (N, N): linear CKA of each pair of networks per hidden
  layer with the unbiased HSIC estimator (Song et al. 2012; as in Kornblith
  et al. 2019, Nguyen et al. 2021), averaged over layers. Invariant to
  orthogonal transforms and isotropic scaling of a layer's activations.
- ``procrustes_distance`` (N, N): the angular orthogonal-Procrustes distance
  ``arccos ‖X̂_aᵀ X̂_b‖_*`` between centred, unit-Frobenius activations (the
  shape metric of Williams et al. 2021), averaged over layers. A metric,
  invariant to orthogonal transforms and isotropic scaling.

Both pairwise measures are computed from the Grams alone (``grams``), so
the feature cache holds everything they need.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import chain
from .archs import ArchSpec
from .forward import forward
from .errors import WeightsimError

PAIR_BLOCK = 4096  # pairs of networks per batched eigenproblem in procrustes_distance


def hidden_activations(s: chain.Stack, spec: ArchSpec, probes: torch.Tensor) -> tuple[list[torch.Tensor],
                                                                                         torch.Tensor]:
    """(per hidden layer (N, P, units), logits (N, P, C)) of the
    scale-normalized networks on ``probes`` (P, *input_shape)."""
    s = chain.scale_normalize_stack(s, spec)
    n = next(iter(s.values())).shape[0]
    x = probes.to(next(iter(s.values())).dtype).reshape(1, len(probes), *spec.input_shape)
    taps: list[torch.Tensor] = []
    logits = forward(spec, s, s, x.expand(n, *x.shape[1:]), train=False, taps=taps)
    return taps, logits


def activation_features(s: chain.Stack, spec: ArchSpec, probes: torch.Tensor) -> torch.Tensor:
    """(N, L·P(P+1)/2 + P·C) activation Grams (upper triangles) and logits."""
    taps, logits = hidden_activations(s, spec, probes)
    p = len(probes)
    iu = torch.triu_indices(p, p, device=logits.device)
    grams = [(h @ h.transpose(1, 2) / h.shape[-1])[:, iu[0], iu[1]] for h in taps]
    return torch.cat([*grams, logits.reshape(len(logits), -1)], 1)


def probe_count(dim: int, depth: int, classes: int) -> int:
    """The number of probe inputs P behind ``activation_features`` rows of
    length ``dim`` (``depth`` hidden layers, ``classes`` logits)."""
    b = depth / 2 + classes
    p = int(round((-b + math.sqrt(b * b + 2 * depth * dim)) / depth))
    if depth * p * (p + 1) // 2 + p * classes != dim:
        raise WeightsimError(f"{dim} values are no activation representation of {depth} layers and {classes} classes")
    return p


def grams(x: torch.Tensor | np.ndarray, depth: int, n_probes: int) -> torch.Tensor:
    """(N, L, P, P) float64 Gram matrices from ``activation_features`` rows."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    p, tri = n_probes, n_probes * (n_probes + 1) // 2
    iu = torch.triu_indices(p, p)
    out = torch.zeros(len(x), depth, p, p, dtype=torch.float64)
    for l in range(depth):
        out[:, l, iu[0], iu[1]] = x[:, l * tri:(l + 1) * tri]
    return out + out.transpose(2, 3) * (1 - torch.eye(p, dtype=torch.float64))


def debiased_cka(k: torch.Tensor) -> np.ndarray:
    """(N, N) debiased linear CKA between networks, averaged over layers;
    ``k`` (N, L, P, P) activation Grams, P ≥ 4. A layer whose HSIC with
    itself is not positive (e.g. all units dead) contributes 0."""
    n, layers, p = k.shape[:3]
    if p < 4:
        raise WeightsimError(f"debiased CKA needs at least 4 probe inputs (got {p})")
    out = torch.zeros(n, n, dtype=torch.float64)
    for l in range(layers):
        kt = k[:, l] * (1 - torch.eye(p, dtype=k.dtype))  # zero diagonal
        v, s, r = kt.reshape(n, -1), kt.sum((1, 2)), kt.sum(2)
        hsic = (v @ v.T + torch.outer(s, s) / ((p - 1) * (p - 2)) - 2 / (p - 2) * (r @ r.T)) / (p * (p - 3))
        d = hsic.diagonal().clamp_min(0).sqrt()
        denom = torch.outer(d, d)
        out += torch.where(denom > 0, hsic / denom.clamp_min(1e-300), torch.zeros_like(hsic))
    return (out / layers).numpy()


def _procrustes_factors(k: torch.Tensor) -> torch.Tensor:
    """(N, P, r) factors ``Y`` with ``Y Yᵀ`` = the centred Gram scaled to
    unit trace: ``‖Y_aᵀ Y_b‖_*`` is the nuclear norm of ``X̂_aᵀ X̂_b``. Only
    the ``r`` leading eigendirections that any network uses are kept (the
    others add nothing to a nuclear norm), so narrow layers cost r×r SVDs."""
    p = k.shape[-1]
    c = torch.eye(p, dtype=k.dtype) - 1.0 / p
    kc = c @ k @ c
    tr = kc.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)
    w, u = torch.linalg.eigh(kc / tr[:, None, None])  # ascending
    r = max(1, int((w > 1e-12).sum(-1).max()))
    return (u * w.clamp_min(0).sqrt()[:, None, :])[:, :, -r:]


def _nuclear(m: torch.Tensor) -> torch.Tensor:
    """(M,) nuclear norms of (M, r, r) matrices: Σ √eig(mᵀm) (a symmetric
    eigenproblem, cheaper than an SVD; exact to ~1e-9 in float64)."""
    return torch.linalg.eigvalsh(m.transpose(1, 2) @ m).clamp_min(0).sqrt().sum(-1)


def procrustes_distance(k: torch.Tensor) -> np.ndarray:
    """(N, N) angular orthogonal-Procrustes distance in [0, π/2], averaged
    over layers; ``k`` (N, L, P, P) activation Grams."""
    n, layers = k.shape[:2]
    out = torch.zeros(n, n, dtype=torch.float64)
    a, b = torch.triu_indices(n, n, 1)
    for l in range(layers):
        y = _procrustes_factors(k[:, l])
        nuc = torch.cat([_nuclear(y[a[i:i + PAIR_BLOCK]].transpose(1, 2) @ y[b[i:i + PAIR_BLOCK]])
                         for i in range(0, len(a), PAIR_BLOCK)]) if len(a) else torch.zeros(0, dtype=torch.float64)
        theta = torch.arccos(nuc.clamp(-1.0, 1.0))
        out[a, b] += theta
        out[b, a] += theta
    return (out / layers).numpy()
