"""Weight-space symmetries and the chain normalization rule (docs/method.md §2–3).

Everything here works on a *stack* of networks of one spec at once: tensors
carry a leading network axis ``N`` and every step is a batched tensor op, so a
solution set of thousands of runs is normalized without a per-network loop.
The single-network functions of the contract (``random_symmetry``,
``canonicalize``, ``features``) are the ``N = 1`` case.

Symmetry group of a hidden layer with ``h`` units (one element: a permutation
``π`` and a multiplier ``m`` per unit; new unit ``j`` = old unit ``π[j]`` × ``m[j]``):

- ReLU units (mlp, cnn, rnn-relu): ``m > 0`` (positive scaling).
- tanh units (mlp, cnn without pooling, rnn-tanh) and GRU units: ``m = ±1``
  (sign flips; for GRU only the candidate path ``n`` flips, the gates keep
  their sign and see flipped inputs).
- Incoming weights and biases are multiplied by ``m``, outgoing weights divided
  by it; recurrent matrices transform as ``diag(m) P W_hh Pᵀ diag(m)⁻¹``.
- With BatchNorm the scale acts on the BatchNorm affine parameters.
- RNN/GRU: ``b_ih`` and ``b_hh`` only act through their sum (for GRU: in the
  r and z gates), so shifting one against the other is a symmetry too.

Canonicalization (``canonicalize``), layer by layer from the input:

1. BatchNorm is folded into its conv (eval mode); biases that only act as a
   sum are merged into ``b_ih``.
2. **Scale** (ReLU): unit ``j``'s incoming vector ``v_j`` (its weights — for
   recurrent layers the input weights ``W_ih`` — and its bias) is divided by
   ``‖v_j‖`` and its outgoing weights multiplied by it. **Sign** (tanh, GRU):
   the unit is flipped so that ``key_j ≥ 0``.
3. **Order**: units are sorted by ``key_j = Σ v_j`` (the sum of the
   normalized incoming vector; for GRU the candidate-gate vector), compared
   to 9 significant digits so rounding noise never decides. Ties are broken
   lexicographically by the full incoming vector (all gates for GRU), then
   the recurrent self-weight ``W_hh[j, j]`` (RNN/GRU), then the outgoing
   weights (into a hidden layer: normalized for that layer and sorted over
   its units, so the order of a layer not yet sorted cannot leak in). Units
   that still tie are duplicates up to a permutation of the next layer;
   only then may the result depend on the input order. ``v_j`` is expressed in
   coordinates the previous layer already fixed, which makes the rule a chain.

Chain features (``features``) need no sorting at all: with ``W̃`` the
scale-normalized weights and an input axis augmented by a constant 1 (so biases
are part of the chain), ``C_l`` maps the input axis to the units of layer ``l``:

- mlp: ``C_l = W̃_l C_{l-1}``.
- cnn: ``C_l[o, (a, σ)] = Σ_i W̃_l[o, i, σ] C_{l-1}[i, a]`` — channels are
  contracted, kernel offsets ``σ`` are appended to the input axis.
- rnn: per lag ``τ``: ``C_l[τ] = W̃_hh C_l[τ-1] + W̃_ih C_{l-1}[τ]`` (the
  linearized response of layer ``l`` to the input ``τ`` steps back).
- gru: the same along the candidate path (``W_in``, ``W_hn``; ``b_hn`` as one
  more column), plus the r- and z-gate responses per lag
  ``W_ir C_{l-1}[τ] + W_hr C_l[τ-1]`` (likewise z): the gates' rows are
  permuted but never flipped, and ``W_hr`` turns the flipped candidate
  response back into the gate's coordinates, so every weight and bias
  enters an exactly invariant Gram.

Feature block of hidden depth ``l`` = upper triangle of the Gram matrix
``G_l = C_lᵀ C_l`` over the (lag-stacked) input axis, off-diagonal entries × √2
so dot products are Frobenius products; ``P``, ``D`` cancel inside ``G_l``, so
it is invariant exactly. The output depth ``L+1`` is ``C_out`` itself (output
units carry no symmetry). Each block is scaled to unit norm. Input axes longer
than ``max_axis`` are compressed by a fixed seeded Gaussian projection to
``proj_dim`` (the same matrix for every network, so invariance is kept and
Gram entries are preserved in expectation; memory stays bounded).
``centered=True`` double-centres each Gram, so the cosine of two blocks is
their linear CKA.
"""
from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import streams
from .archs import RESIDUAL, ArchSpec, param_shapes
from .errors import SpecError

StateDict = dict[str, torch.Tensor]
KEY_DIGITS = 9  # sort keys are compared to 9 significant digits
Stack = dict[str, torch.Tensor]  # name → (N, *shape) float64


# --- validation and stacking ---------------------------------------------------

def check_state_dict(state_dict: StateDict, spec: ArchSpec) -> None:
    """Raise ``SpecError`` unless ``state_dict`` has exactly the tensors of
    ``spec`` with the right shapes and finite values."""
    expected = param_shapes(spec)
    missing, extra = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or extra:
        raise SpecError(f"state dict does not fit the {spec.kind} spec: missing {missing[:4]}, unexpected {extra[:4]}")
    for k, shape in expected.items():
        if tuple(state_dict[k].shape) != shape:
            raise SpecError(f"{k} has shape {tuple(state_dict[k].shape)}, the spec needs {shape}")
        if state_dict[k].is_floating_point() and not torch.isfinite(state_dict[k]).all():
            raise SpecError(f"{k} has non-finite values")


def stack(state_dicts: Sequence[StateDict], spec: ArchSpec, device: str | torch.device = "cpu") -> Stack:
    """Validate and stack state dicts: name → ``(N, *shape)`` float64."""
    if not state_dicts:
        raise SpecError("no networks given")
    for sd in state_dicts:
        check_state_dict(sd, spec)
    return {k: torch.stack([sd[k] for sd in state_dicts]).to(device, torch.float64) for k in param_shapes(spec)}


def unstack(s: Stack, like: StateDict, i: int = 0) -> StateDict:
    """Network ``i`` of a stack, in the dtypes of ``like``."""
    return {k: s[k][i].to(like[k].dtype).cpu() for k in like}


# --- the symmetry group, as layouts of unit axes --------------------------------

@dataclass(frozen=True)
class _Axis:
    """Axis ``axis`` of tensor ``key`` indexes the units of a layer; ``how``:
    ``in`` (× m), ``out`` (÷ m) or ``perm`` (permuted only). ``gates``: the
    axis holds that many blocks of units (GRU rows: r, z, n), and ``how``
    applies per block."""

    key: str
    axis: int
    how: tuple[str, ...]


def _next_in(spec: ArchSpec, l: int) -> str:
    if l + 1 < spec.depth:
        return {"mlp": "layers", "cnn": "convs"}.get(spec.kind, "rnns") + f".{l + 1}." + (
            "weight_ih_l0" if spec.kind in ("rnn", "gru") else "weight")
    return "out.weight"


def _layout(spec: ArchSpec, l: int, folded: bool = False) -> list[_Axis]:
    """Where the units of hidden layer ``l`` live in the state dict."""
    nxt = _Axis(_next_in(spec, l), 1, ("out",))
    b = spec.bias
    if spec.kind == "mlp":
        p = f"layers.{l}."
        return [_Axis(p + "weight", 0, ("in",)), *([_Axis(p + "bias", 0, ("in",))] if b else []), nxt]
    if spec.kind == "cnn":
        p, q = f"convs.{l}.", f"norms.{l}."
        if not spec.batchnorm:
            return [_Axis(p + "weight", 0, ("in",)), *([_Axis(p + "bias", 0, ("in",))] if b else []), nxt]
        conv = "in" if folded else "perm"  # unfolded BN: the scale lives in its affine parameters
        return [_Axis(p + "weight", 0, (conv,)), *([_Axis(p + "bias", 0, (conv,))] if b else []),
                _Axis(q + "weight", 0, ("perm" if folded else "in",)), _Axis(q + "bias", 0, ("in",)),
                _Axis(q + "running_mean", 0, (conv,)), _Axis(q + "running_var", 0, ("perm",)), nxt]
    p = f"rnns.{l}."
    if spec.kind == "rnn":
        return [_Axis(p + "weight_ih_l0", 0, ("in",)), _Axis(p + "weight_hh_l0", 0, ("in",)),
                _Axis(p + "weight_hh_l0", 1, ("out",)),
                *([_Axis(p + "bias_ih_l0", 0, ("in",)), _Axis(p + "bias_hh_l0", 0, ("in",))] if b else []), nxt]
    gates = ("perm", "perm", "in")  # r, z keep their sign; the candidate n flips
    return [_Axis(p + "weight_ih_l0", 0, gates), _Axis(p + "weight_hh_l0", 0, gates),
            _Axis(p + "weight_hh_l0", 1, ("out",)),
            *([_Axis(p + "bias_ih_l0", 0, gates), _Axis(p + "bias_hh_l0", 0, gates)] if b else []), nxt]


def _apply_axis(t: torch.Tensor, ax: _Axis, perm: torch.Tensor, mult: torch.Tensor) -> torch.Tensor:
    """Permute/scale one unit axis of a stacked tensor ``t`` (N, ...)."""
    n, h = perm.shape
    g = len(ax.how)
    t = t.movedim(ax.axis + 1, 1)
    rest = t.shape[2:]
    t = t.reshape(n, g, h, *rest)
    idx = perm.view(n, 1, h, *([1] * len(rest))).expand(n, g, h, *rest)
    t = torch.gather(t, 2, idx)
    factors = torch.stack([mult if how == "in" else 1 / mult if how == "out" else torch.ones_like(mult)
                           for how in ax.how], 1).to(t.dtype)
    t = t * factors.view(n, g, h, *([1] * len(rest)))
    return t.reshape(n, g * h, *rest).movedim(1, ax.axis + 1)


def transform_layer(s: Stack, spec: ArchSpec, l: int, perm: torch.Tensor, mult: torch.Tensor,
                    folded: bool = False) -> Stack:
    """Apply one group element to hidden layer ``l`` of every network:
    ``perm`` (N, h) long, ``mult`` (N, h) positive (ReLU) or ±1 (tanh/GRU)."""
    out = dict(s)
    for ax in _layout(spec, l, folded):
        out[ax.key] = _apply_axis(out[ax.key], ax, perm, mult)
    return out


def _signs_only(spec: ArchSpec) -> bool:
    return spec.kind == "gru" or spec.activation == "tanh"


def random_symmetry(state_dict: StateDict, spec: ArchSpec, seed: int) -> StateDict:
    """A random element of the symmetry group applied to the weights: a
    permutation of every hidden layer's units, with positive scaling
    (``exp(U(-1, 1))``) for ReLU units or random sign flips for tanh/GRU units,
    and for RNN/GRU a random shift between ``b_ih`` and ``b_hh``; for the
    residual families the group of ``streams``. Changes the weights, keeps
    the function."""
    s = stack([state_dict], spec)
    g = torch.Generator().manual_seed(int(seed))
    if spec.kind in RESIDUAL:
        return unstack(streams.random_symmetry_stack(s, spec, g), state_dict)
    changed = False
    for l, h in enumerate(spec.widths):
        perm = torch.randperm(h, generator=g).unsqueeze(0)
        if _signs_only(spec):
            mult = torch.where(torch.rand(1, h, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
            identity = bool((perm == torch.arange(h)).all() and (mult > 0).all())
            if identity and not changed and l == spec.depth - 1:
                mult[0, 0] = -1.0  # never return the identity
            changed |= not identity
        else:
            mult = torch.exp(torch.rand(1, h, generator=g, dtype=torch.float64) * 2 - 1)
            changed = True
        s = transform_layer(s, spec, l, perm, mult)
        if spec.kind in ("rnn", "gru") and spec.bias:
            p = f"rnns.{l}."
            shift = torch.randn(s[p + "bias_ih_l0"].shape, generator=g, dtype=torch.float64)
            if spec.kind == "gru":
                shift[:, 2 * h:] = 0  # b_in and b_hn act separately
            s[p + "bias_ih_l0"] = s[p + "bias_ih_l0"] + shift
            s[p + "bias_hh_l0"] = s[p + "bias_hh_l0"] - shift
    return unstack(s, state_dict)


# --- canonical form ------------------------------------------------------------

def fold_batchnorm(s: Stack, spec: ArchSpec) -> Stack:
    """Fold eval-mode BatchNorm into the preceding conv. The BatchNorm stays
    as an identity carrying the folded bias (mean 0, var 1,
    weight √(1+eps), bias = folded bias), so the keys of ``spec`` still apply."""
    if not spec.batchnorm:
        return s
    out = dict(s)
    eps = 1e-5  # torch's BatchNorm default, the only one build() uses
    for l in range(spec.depth):
        p, q = f"convs.{l}.", f"norms.{l}."
        scale = s[q + "weight"] / torch.sqrt(s[q + "running_var"] + eps)
        conv_b = s[p + "bias"] if spec.bias else torch.zeros_like(scale)
        out[p + "weight"] = s[p + "weight"] * scale.view(*scale.shape, *([1] * (s[p + "weight"].dim() - 2)))
        out[q + "bias"] = (conv_b - s[q + "running_mean"]) * scale + s[q + "bias"]
        if spec.bias:
            out[p + "bias"] = torch.zeros_like(conv_b)
        out[q + "running_mean"] = torch.zeros_like(scale)
        out[q + "running_var"] = torch.ones_like(scale)
        out[q + "weight"] = torch.full_like(scale, math.sqrt(1 + eps))
    return out


def merge_biases(s: Stack, spec: ArchSpec) -> Stack:
    """RNN/GRU: move the part of ``b_hh`` that only acts through ``b_ih + b_hh``
    into ``b_ih`` (all of it for rnn; the r and z gates for gru)."""
    if spec.kind not in ("rnn", "gru") or not spec.bias:
        return s
    out = dict(s)
    for l, h in enumerate(spec.widths):
        p = f"rnns.{l}."
        movable = s[p + "bias_hh_l0"].clone()
        if spec.kind == "gru":
            movable[:, 2 * h:] = 0
        out[p + "bias_ih_l0"] = s[p + "bias_ih_l0"] + movable
        out[p + "bias_hh_l0"] = s[p + "bias_hh_l0"] - movable
    return out


def _incoming(s: Stack, spec: ArchSpec, l: int) -> torch.Tensor:
    """(N, h, d) incoming vectors of layer ``l``'s units (weights and bias, in
    the coordinates of the previous layer); for GRU the candidate gate."""
    n, h = next(iter(s.values())).shape[0], spec.widths[l]
    if spec.kind in ("rnn", "gru"):
        p = f"rnns.{l}."
        w, b = s[p + "weight_ih_l0"], s.get(p + "bias_ih_l0")
        if spec.kind == "gru":
            w, b = w[:, 2 * h:], None if b is None else b[:, 2 * h:]
    else:
        p = f"layers.{l}." if spec.kind == "mlp" else f"convs.{l}."
        w = s[p + "weight"]
        b = s[f"norms.{l}.bias"] if spec.batchnorm else s.get(p + "bias")
    parts = [w.reshape(n, h, -1)] + ([] if b is None else [b.reshape(n, h, 1)])
    return torch.cat(parts, -1)


def _tie_break(s: Stack, spec: ArchSpec, l: int) -> torch.Tensor:
    """(N, h, d') secondary keys, all invariant under the symmetries still free:
    every gate's incoming row, ``W_hh[j, j]`` (recurrent), then unit ``j``'s
    outgoing weights — for a hidden next layer after normalizing that layer and
    sorted over its (not yet ordered) units."""
    n, h = next(iter(s.values())).shape[0], spec.widths[l]
    parts = [_incoming(s, spec, l)]
    if spec.kind == "gru":
        parts.append(s[f"rnns.{l}.weight_ih_l0"].reshape(n, 3, h, -1).permute(0, 2, 1, 3).reshape(n, h, -1))
    if spec.kind in ("rnn", "gru"):
        parts.append(torch.diagonal(s[f"rnns.{l}.weight_hh_l0"][:, -h:], dim1=1, dim2=2).unsqueeze(-1))
    if l + 1 < spec.depth:
        out = _normalize_layer(s, spec, l + 1)[_next_in(spec, l)].movedim(2, 1).sort(dim=2).values
    else:
        out = s[_next_in(spec, l)].movedim(2, 1)
    parts.append(out.reshape(n, h, -1))
    return torch.cat(parts, -1)


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to ``KEY_DIGITS`` significant digits of each network's largest
    value, so float rounding noise cannot decide an order."""
    scale = x.abs().flatten(1).amax(1).clamp_min(1e-300).view(-1, *([1] * (x.dim() - 1)))
    return torch.round(x / scale * 10.0 ** KEY_DIGITS)


def _order(key: torch.Tensor, s: Stack, spec: ArchSpec, l: int) -> torch.Tensor:
    """Sorting permutation (N, h): by ``key``; networks with ties (equal to
    ``KEY_DIGITS`` significant digits) fall back to a full lexicographic sort
    (``_tie_break``)."""
    qkey = _quantize(key)
    order = torch.argsort(qkey, dim=1, stable=True)
    sorted_key = torch.gather(qkey, 1, order)
    tied = (sorted_key[:, 1:] == sorted_key[:, :-1]).any(1).nonzero().flatten().tolist()
    if tied:
        secondary = _quantize(_tie_break(s, spec, l)).cpu().numpy()
        k = qkey.cpu().numpy()
        for i in tied:
            cols = [secondary[i, :, c] for c in range(secondary.shape[2] - 1, -1, -1)]
            order[i] = torch.from_numpy(np.lexsort([*cols, k[i]])).to(order.device)
    return order


def _normalize_layer(s: Stack, spec: ArchSpec, l: int) -> Stack:
    """Step 1 of the rule on layer ``l``: unit-norm incoming vectors (ReLU) or
    non-negative keys (tanh/GRU)."""
    v = _incoming(s, spec, l)
    if _signs_only(spec):
        mult = torch.where(v.sum(-1) < 0, -1.0, 1.0).to(v.dtype)
    else:
        norm = v.norm(dim=-1)
        mult = 1 / torch.where(norm > 0, norm, torch.ones_like(norm))
    ident = torch.arange(spec.widths[l], device=v.device).expand(v.shape[0], -1)
    return transform_layer(s, spec, l, ident, mult, folded=True)


def _prepare(s: Stack, spec: ArchSpec) -> Stack:
    return merge_biases(fold_batchnorm(s, spec), spec)


def scale_normalize_stack(s: Stack, spec: ArchSpec) -> Stack:
    """Scale (or sign) normalization of every layer, without reordering
    (residual families: ``streams.scale_normalize``)."""
    if spec.kind in RESIDUAL:
        return streams.scale_normalize(s, spec)
    s = _prepare(s, spec)
    for l in range(spec.depth):
        s = _normalize_layer(s, spec, l)
    return s


def canonicalize_stack(s: Stack, spec: ArchSpec) -> Stack:
    """The chain normalization rule on a stack of networks (see module doc);
    not defined for the residual families (their chain features need none)."""
    if spec.kind in RESIDUAL:
        raise SpecError(f"{spec.kind}: no canonical form (its chain features and weight matching need none)")
    s = _prepare(s, spec)
    for l in range(spec.depth):
        s = _normalize_layer(s, spec, l)
        order = _order(_incoming(s, spec, l).sum(-1), s, spec, l)
        s = transform_layer(s, spec, l, order, torch.ones_like(order, dtype=torch.float64), folded=True)
    return s


def canonicalize(state_dict: StateDict, spec: ArchSpec) -> StateDict:
    """Canonical representative of the weights' symmetry orbit: the same
    function, and the same output for every symmetric copy."""
    return unstack(canonicalize_stack(stack([state_dict], spec), spec), state_dict)


# --- chain features --------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _projection(axis: int, dim: int, tag: str) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(f"weightsim-projection|{tag}|{axis}|{dim}".encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(axis, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)


def _bounded(c: torch.Tensor, max_axis: int, proj_dim: int, tag: str) -> torch.Tensor:
    """Project the last (input) axis of ``c`` if it is longer than ``max_axis``."""
    if c.shape[-1] <= max_axis:
        return c
    return c @ _projection(c.shape[-1], proj_dim, tag).to(c.device)


def bounder(max_axis: int = 512, proj_dim: int = 256) -> streams.Bound:
    """``_bounded`` with these limits, as ``streams`` takes it."""
    return lambda c, tag: _bounded(c, max_axis, proj_dim, tag)


def _gram_block(m: torch.Tensor, centered: bool) -> torch.Tensor:
    """(N, u, A) → (N, A(A+1)/2): upper triangle of ``mᵀm``, off-diagonal × √2."""
    g = m.transpose(1, 2) @ m
    if centered:
        g = g - g.mean(1, keepdim=True)
        g = g - g.mean(2, keepdim=True)
    a = g.shape[-1]
    iu = torch.triu_indices(a, a, device=g.device)
    w = torch.full(iu[0].shape, math.sqrt(2.0), dtype=g.dtype, device=g.device)
    w[iu[0] == iu[1]] = 1.0
    return g[:, iu[0], iu[1]] * w


def _chain_blocks(s: Stack, spec: ArchSpec, max_axis: int, proj_dim: int) -> list[list[torch.Tensor]]:
    """Per depth 1..L+1, the matrices (N, units, A) whose Grams are the features;
    the last entry holds the output response (no Gram taken)."""
    n = next(iter(s.values())).shape[0]
    dev = next(iter(s.values())).device
    blocks: list[list[torch.Tensor]] = []
    if spec.kind in ("mlp", "cnn"):
        c_in = spec.input_shape[0]
        # C: (N, units, A) response without the constant; k: (N, units) response to the constant
        c = torch.eye(c_in, dtype=torch.float64, device=dev).expand(n, c_in, c_in)
        k = torch.zeros(n, c_in, dtype=torch.float64, device=dev)
        for l in range(spec.depth):
            p = f"layers.{l}." if spec.kind == "mlp" else f"convs.{l}."
            w = s[p + "weight"].reshape(n, spec.widths[l], c.shape[1], -1)  # (N, out, in, σ)
            b = s[f"norms.{l}.bias"] if spec.batchnorm else s.get(p + "bias", torch.zeros(n, w.shape[1], device=dev,
                                                                                          dtype=torch.float64))
            if l == 0:  # C_0 is the identity: the product is W itself, exactly and without the matmul
                c = w.permute(0, 1, 3, 2).reshape(n, w.shape[1], -1)
            else:
                c = torch.einsum("nois,nia->nosa", w, c).reshape(n, w.shape[1], -1)
            k = torch.einsum("noi,ni->no", w.sum(-1), k) + b
            c = _bounded(c, max_axis, proj_dim, f"{spec.kind}-{l}")
            blocks.append([torch.cat([c, k.unsqueeze(-1)], -1)])  # (N, units, A+1), last: the constant
        w_out, b_out = s["out.weight"], s.get("out.bias", torch.zeros(n, spec.num_classes, device=dev,
                                                                   dtype=torch.float64))
        out = w_out @ blocks[-1][0]
        out[:, :, -1] += b_out
        blocks.append([out])
        return blocks
    # recurrent: per lag τ, C[τ]: (N, units+1, A+1) including the constant row
    steps, feat = spec.input_shape
    eye = torch.eye(feat + 1, dtype=torch.float64, device=dev).expand(n, feat + 1, feat + 1)
    prev = [eye] + [torch.zeros_like(eye)] * (steps - 1)  # C̄_0[τ]: the input itself at lag 0
    for l, h in enumerate(spec.widths):
        p = f"rnns.{l}."
        w_ih, w_hh = s[p + "weight_ih_l0"], s[p + "weight_hh_l0"]
        b = s.get(p + "bias_ih_l0", torch.zeros(n, w_ih.shape[1], device=dev, dtype=torch.float64))
        gates = 3 if spec.kind == "gru" else 1
        w_bar = torch.cat([w_ih, b.unsqueeze(-1)], -1).reshape(n, gates, h, -1)  # acts on [x; 1]
        w_rec = w_hh.reshape(n, gates, h, h)[:, -1]
        x = [w_bar[:, -1] @ pc for pc in prev]  # candidate path input response per lag
        cur, acc = [], torch.zeros_like(x[0])
        for tau in range(steps):
            acc = w_rec @ acc + x[tau] if tau else x[0]
            cur.append(acc)
        lagged = torch.cat(cur, -1)  # (N, h, steps·(A+1))
        if spec.kind == "gru" and spec.bias:  # b_hn: flipped and permuted with the units, like the responses
            lagged = torch.cat([lagged, s[p + "bias_hh_l0"][:, 2 * h:].unsqueeze(-1)], -1)
        entry = [_bounded(lagged, max_axis, proj_dim, f"{spec.kind}-{l}")]
        if spec.kind == "gru":  # r and z gates: rows permuted, never flipped; their recurrence W_hg sees h
            w_gate = w_hh.reshape(n, gates, h, h)
            entry += [_bounded(torch.cat([w_bar[:, g] @ pc + (w_gate[:, g] @ cur[tau - 1] if tau else 0)
                                          for tau, pc in enumerate(prev)], -1), max_axis, proj_dim,
                               f"gru-gate{g}-{l}") for g in (0, 1)]
        blocks.append(entry)
        const_row = torch.zeros(n, 1, eye.shape[-1], dtype=torch.float64, device=dev)
        const_row[:, 0, -1] = 1
        prev = [torch.cat([cur[0], const_row], 1)] + [torch.cat([c_, torch.zeros_like(const_row)], 1)
                                                      for c_ in cur[1:]]
    w_out = s["out.weight"]
    w_bar = torch.cat([w_out, s.get("out.bias", torch.zeros(n, w_out.shape[1], device=dev,
                                                            dtype=torch.float64)).unsqueeze(-1)], -1)
    blocks.append([torch.cat([w_bar @ pc for pc in prev], -1)])
    return blocks


def chain_matrices(s: Stack, spec: ArchSpec, max_axis: int = 512, proj_dim: int = 256) -> list[list[torch.Tensor]]:
    """The chain matrices of a stack (scale-normalized first): per depth
    1..L+1 the (N, units, A) matrices whose Grams are the features (the last
    depth: the output response itself; residual families: see ``streams``).
    ``feature_blocks`` takes them."""
    if spec.kind in RESIDUAL:
        return streams.chain_blocks(s, spec, bounder(max_axis, proj_dim))
    return _chain_blocks(scale_normalize_stack(s, spec), spec, max_axis, proj_dim)


def feature_blocks(s: Stack | list[list[torch.Tensor]], spec: ArchSpec, centered: bool = False, max_axis: int = 512,
                   proj_dim: int = 256) -> list[torch.Tensor]:
    """Chain features of a stack (or of its ``chain_matrices``), one
    (N, D_d) float64 block per depth 1..L+1, each of its parts unit-norm;
    see the module doc. Parts given as (N, D) are invariant already and kept
    as they are; (N, units, A) parts give their Gram (the output depth: itself)."""
    blocks = s if isinstance(s, list) else chain_matrices(s, spec, max_axis, proj_dim)
    out = []
    for d, entry in enumerate(blocks):
        parts = [m.flatten(1) if d == len(blocks) - 1 or m.dim() == 2 else _gram_block(m, centered) for m in entry]
        out.append(torch.cat([v / v.norm(dim=1, keepdim=True).clamp_min(1e-300) for v in parts], 1))
    return out


def features_stack(s: Stack, spec: ArchSpec, depth: int | None = None, centered: bool = False,
                   max_axis: int = 512, proj_dim: int = 256) -> torch.Tensor:
    """Chain features of a stack: (N, D) float64, each depth block unit-norm.

    ``depth``: 1..L (hidden layers, Gram blocks) or L+1 (output response);
    ``None`` concatenates all depths."""
    if depth is not None and not 1 <= depth <= spec.depth + 1:
        raise SpecError(f"depth must be in 1..{spec.depth + 1} for this {spec.kind} (got {depth})")
    blocks = feature_blocks(s, spec, centered, max_axis, proj_dim)
    return torch.cat(blocks if depth is None else [blocks[depth - 1]], 1)


def features(state_dict: StateDict, spec: ArchSpec, depth: int | None = None, centered: bool = False,
             max_axis: int = 512, proj_dim: int = 256) -> np.ndarray:
    """Symmetry-invariant chain features of one network: 1-D float64 array
    (see the module doc; ``features_stack`` for many networks at once)."""
    return features_stack(stack([state_dict], spec), spec, depth, centered, max_axis, proj_dim)[0].numpy()
