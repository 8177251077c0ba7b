"""Residual streams and attention: the weight-space symmetries of ``resmlp``,
``resnet`` and ``transformer`` and their chain features (METHOD.md §6,
"Residual and attention networks"; README "Symmetries of residual and
attention networks" writes the groups down).

Everything works on a stack (``chain.Stack``: name → (N, *shape) float64).

The group, per family (new unit ``j`` = old unit ``π[j]`` × ``m[j]``):

- **stream** (every family): one permutation ``P`` of the residual stream's
  units, shared by every tensor that writes the stream (rows of the stem,
  of each block's output layer and of projection shortcuts, the position
  table's columns, LayerNorm gains and biases) and every tensor that reads
  it (columns of each block's input layers and of the head). ResNet streams
  are post-ReLU, so each stage's stream also has positive scales ``c``
  (on the affine parameters of the BatchNorms that write it, ``1/c`` on the
  readers); a stage that opens with a projection starts a new stream.
- **block hidden units** (ReLU): a permutation and positive scale per block
  (resmlp/transformer ``fc1`` rows × m, ``fc2`` columns ÷ m; resnet ``bn1``'s
  affine × m, ``conv2`` columns ÷ m).
- **BatchNorm** (resnet): the conv in front of a BatchNorm scaled per output
  channel by ``a > 0`` with its running mean × a and running variance × a².
  Batch statistics make this exact up to BatchNorm's ``eps`` (which is not
  scaled with the weights) in training and in evaluation.
- **attention** (transformer): a permutation of heads; per head an invertible
  ``A``: ``W_Q^h → Aᵀ W_Q^h``, ``W_K^h → A⁻¹ W_K^h`` (biases alike), so
  ``q·k`` is unchanged; per head an invertible ``B``: ``W_V^h → B W_V^h``,
  ``W_O^h → W_O^h B⁻¹``; and any shift of the key bias (it adds a constant to
  all of a query's scores, which softmax ignores).

Chain features (no sorting, no ties): the linearized responses (ReLU taken as
the identity, LayerNorm as its centring and gain, BatchNorm folded with its
``eps`` dropped — so the BatchNorm scale cancels exactly) of every unit to an
input axis augmented by a constant, carried from the input through the chain:

- resmlp: input axis = the input features; stream ``S = W_stem``, block
  hidden ``H = W_1 S``, then ``S ← S + W_2 H``.
- resnet: input axis = input channel × displacement (the composed kernels:
  each conv convolves the response with its kernel, dilated by the stride
  of its input map; displacements beyond the input's extent are cropped);
  identity shortcuts add the response, projections apply their 1×1 conv.
- transformer: input axis = a token's features, its position (one-hot) and
  the constant; ``S = [W_stem | Posᵀ | b_stem]``; per block the query/key
  form of every head, ``M_h = Q_hᵀ K_h`` (A × A; the key-side constant column
  dropped), enters as ``Σ_h M_h`` and ``Σ_h M_h M_hᵀ``; each head's write
  ``W_O^h V_h`` enters through the Gram summed over heads; then the MLP as
  in resmlp.

A depth's feature block holds the Grams (over the input axis) of the block's
responses — hidden units and, for resnet, stream units normalized to unit
row norm, which removes their positive scales — plus the attention forms
above; the last depth is the output response. Each part is invariant
exactly: permutations cancel in Grams and sums over units or heads, ``A``
and ``B`` cancel inside ``M_h`` and ``W_O^h V_h``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .archs import ArchSpec, resnet_strides

Stack = dict[str, torch.Tensor]
Bound = Callable[[torch.Tensor, str], torch.Tensor]  # projects a long input axis (chain._bounded)


# --- the symmetry group ----------------------------------------------------------

def _units(s: Stack, key: str, axis: int, perm: torch.Tensor, mult: torch.Tensor | None = None) -> None:
    """Permute axis ``axis`` of every network's ``key`` by ``perm`` and multiply it by ``mult`` (in place
    in ``s``; a missing ``key``, e.g. a bias the spec leaves out, is skipped)."""
    if key not in s:
        return
    t = s[key].index_select(axis + 1, perm)
    if mult is not None:
        t = t * mult.view(-1, *[1] * (t.dim() - axis - 2))
    s[key] = t


def _positive(h: int, g: torch.Generator) -> torch.Tensor:
    return torch.exp(torch.rand(h, generator=g, dtype=torch.float64) * 2 - 1)


def _invertible(h: int, g: torch.Generator) -> torch.Tensor:
    """A random well-conditioned invertible h × h matrix (orthogonal · positive diagonal · orthogonal)."""
    q1, _ = torch.linalg.qr(torch.randn(h, h, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(h, h, generator=g, dtype=torch.float64))
    return q1 @ torch.diag(torch.exp(torch.rand(h, generator=g, dtype=torch.float64) - 0.5)) @ q2


def _stream(s: Stack, writers: list[tuple[str, int]], readers: list[str], perm: torch.Tensor,
            scale: torch.Tensor | None = None, stats: list[str] = ()) -> None:
    """The stream permutation (and positive scale): ``writers`` (key, axis)
    × scale, ``readers``' columns ÷ scale, ``stats`` (BatchNorm running
    statistics of the writers) permuted only."""
    for key, axis in writers:
        _units(s, key, axis, perm, scale)
    for key in readers:
        _units(s, key, 1, perm, None if scale is None else 1 / scale)
    for key in stats:
        _units(s, key, 0, perm)


def _mlp_hidden(s: Stack, q: str, h: int, g: torch.Generator) -> None:
    """Block ``q``'s ReLU units: ``fc1`` rows × m, ``fc2`` columns ÷ m, permuted alike."""
    perm, m = torch.randperm(h, generator=g), _positive(h, g)
    _units(s, q + "fc1.weight", 0, perm, m)
    _units(s, q + "fc1.bias", 0, perm, m)
    _units(s, q + "fc2.weight", 1, perm, 1 / m)


def _resmlp_symmetry(s: Stack, spec: ArchSpec, g: torch.Generator) -> None:
    d, h = spec.widths
    blocks = [f"blocks.{i}." for i in range(spec.blocks)]
    _stream(s, [("stem.weight", 0), ("stem.bias", 0)] + [(q + k, 0) for q in blocks for k in ("fc2.weight", "fc2.bias")],
            [q + "fc1.weight" for q in blocks] + ["out.weight"], torch.randperm(d, generator=g))
    for q in blocks:
        _mlp_hidden(s, q, h, g)


def _bn_keys(bn: str) -> tuple[list[tuple[str, int]], list[str]]:
    return [(bn + "weight", 0), (bn + "bias", 0)], [bn + "running_mean", bn + "running_var"]


def _resnet_symmetry(s: Stack, spec: ArchSpec, g: torch.Generator) -> None:
    blocks = [(si, f"stages.{si}.{j}.") for si, strides in enumerate(resnet_strides(spec)) for j in range(len(strides))]
    for si, w in enumerate(spec.widths):  # the stream of stage si: written by its blocks' bn2 and projections
        writers, readers, stats = [], [], []
        convs = []
        for bs, q in blocks:
            opens = q + "downsample.0.weight" in s
            if bs == si:
                for bn, conv in ((q + "bn2.", q + "conv2.weight"), *(((q + "downsample.1.", q + "downsample.0.weight"),)
                                                                    if opens else ())):
                    wr, st = _bn_keys(bn)
                    writers, stats, convs = writers + wr, stats + st, convs + [conv]
            if (bs == si and not opens) or (bs == si + 1 and opens):
                readers += [q + "conv1.weight"] + ([q + "downsample.0.weight"] if opens else [])
        if si == 0:
            wr, st = _bn_keys("stem_bn.")
            writers, stats, convs = writers + wr, stats + st, convs + ["stem.weight"]
        if si == len(spec.widths) - 1:
            readers.append("out.weight")
        perm = torch.randperm(w, generator=g)
        for conv in convs:  # the rows of the convs in front of the writing BatchNorms follow their channels
            _units(s, conv, 0, perm)
        _stream(s, writers, readers, perm, _positive(w, g), stats)
    for si, q in blocks:  # block hidden units: conv1 rows and bn1, scaled on bn1's affine
        w = spec.widths[si]
        perm, m = torch.randperm(w, generator=g), _positive(w, g)
        _units(s, q + "conv1.weight", 0, perm)
        for key in ("bn1.weight", "bn1.bias"):
            _units(s, q + key, 0, perm, m)
        for key in ("bn1.running_mean", "bn1.running_var"):
            _units(s, q + key, 0, perm)
        _units(s, q + "conv2.weight", 1, perm, 1 / m)
    pairs = [("stem.weight", "stem_bn.")] + [(q + c, q + b) for _, q in blocks
                                             for c, b in (("conv1.weight", "bn1."), ("conv2.weight", "bn2."),
                                                          ("downsample.0.weight", "downsample.1."))]
    for conv, bn in pairs:  # BatchNorm: the weights in front of it are scale-free
        if conv in s:
            a = _positive(s[conv].shape[1], g)
            ident = torch.arange(len(a))
            _units(s, conv, 0, ident, a)
            _units(s, bn + "running_mean", 0, ident, a)
            _units(s, bn + "running_var", 0, ident, a * a)


def _heads(s: Stack, q: str, d: int, heads: int, g: torch.Generator) -> None:
    """Head permutation, per-head bases of queries/keys and values/outputs, key-bias shift of block ``q``."""
    dh = d // heads
    hp = torch.randperm(heads, generator=g)
    perm = (hp.view(-1, 1) * dh + torch.arange(dh)).flatten()
    for name in ("q", "k", "v"):
        _units(s, f"{q}attn.{name}.weight", 0, perm)
        _units(s, f"{q}attn.{name}.bias", 0, perm)
    _units(s, q + "attn.o.weight", 1, perm)
    a = torch.stack([_invertible(dh, g) for _ in range(heads)])  # (H, dh, dh)
    b = torch.stack([_invertible(dh, g) for _ in range(heads)])
    maps = {"q": a.transpose(1, 2), "k": torch.linalg.inv(a), "v": b}
    for name, m in maps.items():
        for part in ("weight", "bias"):
            key = f"{q}attn.{name}.{part}"
            if key in s:
                t = s[key]
                t = t.reshape(t.shape[0], heads, dh, *t.shape[2:])
                s[key] = torch.einsum("hij,nhj...->nhi...", m, t).reshape(s[key].shape)
    wo = s[q + "attn.o.weight"]
    s[q + "attn.o.weight"] = torch.einsum("ndhj,hji->ndhi", wo.reshape(wo.shape[0], d, heads, dh),
                                          torch.linalg.inv(b)).reshape(wo.shape)
    if q + "attn.k.bias" in s:
        s[q + "attn.k.bias"] = s[q + "attn.k.bias"] + torch.randn(d, generator=g, dtype=torch.float64)


def _transformer_symmetry(s: Stack, spec: ArchSpec, g: torch.Generator) -> None:
    d, h = spec.widths
    blocks = [f"blocks.{i}." for i in range(spec.blocks)]
    writes = ("ln1.weight", "ln1.bias", "attn.o.weight", "attn.o.bias", "ln2.weight", "ln2.bias", "fc2.weight",
              "fc2.bias")
    _stream(s, [("stem.weight", 0), ("stem.bias", 0), ("pos.weight", 1)] + [(q + k, 0) for q in blocks for k in writes],
            [q + k for q in blocks for k in ("attn.q.weight", "attn.k.weight", "attn.v.weight", "fc1.weight")]
            + ["out.weight"], torch.randperm(d, generator=g))
    for q in blocks:
        _heads(s, q, d, spec.heads, g)
        _mlp_hidden(s, q, h, g)


def random_symmetry_stack(s: Stack, spec: ArchSpec, g: torch.Generator) -> Stack:
    """One random element of the family's group (see the module doc), the
    same for every network of the stack."""
    out = dict(s)
    {"resmlp": _resmlp_symmetry, "resnet": _resnet_symmetry, "transformer": _transformer_symmetry}[spec.kind](
        out, spec, g)
    return out


# --- chain features ----------------------------------------------------------------

def _affine(s: Stack, name: str, r: torch.Tensor) -> torch.Tensor:
    """Layer ``name`` (weight (N, o, i), optional bias) on responses r (N, i, A); the last column of A is
    the constant."""
    out = s[name + "weight"] @ r
    if name + "bias" in s:
        out[:, :, -1] += s[name + "bias"]
    return out


def _unit_rows(r: torch.Tensor) -> torch.Tensor:
    return r / r.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def _input(n: int, features: int, extra: int, bound: Bound, tag: str, dev) -> torch.Tensor:
    """(N, features, A): each input feature's response, the input axis projected by ``bound``, then
    ``extra`` zero columns (transformer positions) and the constant."""
    eye = bound(torch.eye(features, dtype=torch.float64, device=dev), tag)
    r = torch.cat([eye, eye.new_zeros(features, extra + 1)], 1)
    return r.expand(n, *r.shape).clone()


def _resmlp_blocks(s: Stack, spec: ArchSpec, bound: Bound) -> list[list[torch.Tensor]]:
    n = s["stem.weight"].shape[0]
    stream = _affine(s, "stem.", _input(n, spec.input_shape[0], 0, bound, "resmlp", s["stem.weight"].device))
    entries = [[stream]]
    for i in range(spec.blocks):
        hidden = _affine(s, f"blocks.{i}.fc1.", stream)
        stream = stream + _affine(s, f"blocks.{i}.fc2.", hidden)
        entries.append([_unit_rows(hidden), stream])
    return entries + [[_affine(s, "out.", stream)]]


def _layer_norm(s: Stack, name: str, r: torch.Tensor) -> torch.Tensor:
    """LayerNorm linearized: centring over the units, then gain and bias."""
    out = (r - r.mean(1, keepdim=True)) * s[name + "weight"].unsqueeze(-1)
    if name + "bias" in s:
        out[:, :, -1] += s[name + "bias"]
    return out


def _transformer_blocks(s: Stack, spec: ArchSpec, bound: Bound) -> list[list[torch.Tensor]]:
    (steps, feat), (d, _), heads = spec.input_shape, spec.widths, spec.heads
    n, dev = s["stem.weight"].shape[0], s["stem.weight"].device
    stream = _affine(s, "stem.", _input(n, feat, steps, bound, "transformer", dev))
    stream[:, :, -steps - 1:-1] += s["pos.weight"].transpose(1, 2)
    entries = [[stream]]
    for i in range(spec.blocks):
        q = f"blocks.{i}."
        a = _layer_norm(s, q + "ln1.", stream)
        qh, kh, vh = (_affine(s, f"{q}attn.{x}.", a).view(n, heads, d // heads, -1) for x in "qkv")
        kh = torch.cat([kh[..., :-1], torch.zeros_like(kh[..., -1:])], -1)  # a key-side constant: softmax ignores it
        forms = torch.einsum("nhia,nhib->nhab", qh, kh)  # (N, H, A, A): q·k of every head
        writes = torch.einsum("ndhi,nhia->nhda", s[q + "attn.o.weight"].view(n, d, heads, -1), vh)
        stream = stream + writes.sum(1)
        if q + "attn.o.bias" in s:
            stream[:, :, -1] += s[q + "attn.o.bias"]
        hidden = _affine(s, q + "fc1.", _layer_norm(s, q + "ln2.", stream))
        stream = stream + _affine(s, q + "fc2.", hidden)
        entries.append([forms.sum(1).flatten(1), torch.einsum("nhab,nhcb->nac", forms, forms).flatten(1),
                        writes.flatten(1, 2), _unit_rows(hidden), stream])
    return entries + [[_affine(s, "out.", stream)]]


class _Response:
    """A resnet unit response: ``r`` (N, units, in channels, *displacement) and ``k`` (N, units), the
    response to the constant."""

    def __init__(self, r: torch.Tensor, k: torch.Tensor):
        self.r, self.k = r, k

    def compose(self, w: torch.Tensor, dilation: int, limit: tuple[int, ...]) -> "_Response":
        """A convolution ``w`` (N, o, i, *kernel) applied to the response: the kernel (dilated by the
        input map's stride) convolved over the displacement axes, cropped to ``limit``."""
        n, i, a, *disp = self.r.shape
        o, kernel = w.shape[1], w.shape[3:]
        conv = F.conv2d if len(kernel) == 2 else F.conv1d
        x = self.r.movedim(2, 0).reshape(a, n * i, *disp)
        flipped = w.flip(list(range(3, w.dim()))).reshape(n * o, i, *kernel)
        y = conv(x, flipped, groups=n, dilation=dilation, padding=[dilation * (s - 1) for s in kernel])
        r = y.reshape(a, n, o, *y.shape[2:]).movedim(0, 2)
        return _Response(_fit(r, limit), torch.einsum("noi,ni->no", w.flatten(3).sum(-1), self.k))

    def batch_norm(self, s: Stack, bn: str) -> "_Response":
        """BatchNorm ``bn`` folded with ``eps`` dropped: scale-free in the weights in front of it."""
        a = s[bn + "weight"] / s[bn + "running_var"].sqrt()
        return _Response(self.r * a.view(*a.shape, *[1] * (self.r.dim() - 2)),
                         a * (self.k - s[bn + "running_mean"]) + s[bn + "bias"])

    def __add__(self, other: "_Response") -> "_Response":
        size = [max(x, y) for x, y in zip(self.r.shape[3:], other.r.shape[3:])]
        return _Response(_fit(self.r, size) + _fit(other.r, size), self.k + other.k)

    def matrix(self, bound: Bound, tag: str) -> torch.Tensor:
        """(N, units, A): displacement flattened and projected by ``bound``, the constant last."""
        return torch.cat([bound(self.r.flatten(2), tag), self.k.unsqueeze(-1)], -1)


def _fit(r: torch.Tensor, size) -> torch.Tensor:
    """Centre-crop or zero-pad the displacement axes of ``r`` to ``size`` (all odd)."""
    for axis, want in enumerate(size, start=3):
        have = r.shape[axis]
        if have > want:
            r = r.narrow(axis, (have - want) // 2, want)
        elif have < want:
            pad = [0, 0] * (r.dim() - axis - 1) + [(want - have) // 2] * 2
            r = F.pad(r, pad)
    return r


def _resnet_blocks(s: Stack, spec: ArchSpec, bound: Bound) -> list[list[torch.Tensor]]:
    n, dev = s["stem.weight"].shape[0], s["stem.weight"].device
    c, *spatial = spec.input_shape
    limit = tuple(2 * x - 1 for x in spatial)  # displacements that reach another input position
    delta = torch.zeros(n, c, c, *[1] * len(spatial), dtype=torch.float64, device=dev)
    delta.view(n, c, c)[:] = torch.eye(c, dtype=torch.float64, device=dev)
    stream = _Response(delta, delta.new_zeros(n, c)).compose(s["stem.weight"], 1, limit).batch_norm(s, "stem_bn.")
    entries, dilation = [[_unit_rows(stream.matrix(bound, "resnet-0"))]], 1
    for si, strides in enumerate(resnet_strides(spec)):
        for j, stride in enumerate(strides):
            q = f"stages.{si}.{j}."
            hidden = stream.compose(s[q + "conv1.weight"], dilation, limit).batch_norm(s, q + "bn1.")
            out = hidden.compose(s[q + "conv2.weight"], dilation * stride, limit).batch_norm(s, q + "bn2.")
            if q + "downsample.0.weight" in s:
                stream = stream.compose(s[q + "downsample.0.weight"], dilation, limit).batch_norm(s, q + "downsample.1.")
            stream, dilation = out + stream, dilation * stride
            tag = f"resnet-{len(entries)}"
            entries.append([_unit_rows(hidden.matrix(bound, tag)), _unit_rows(stream.matrix(bound, tag))])
    return entries + [[_affine(s, "out.", stream.matrix(bound, f"resnet-{len(entries)}"))]]


def chain_blocks(s: Stack, spec: ArchSpec, bound: Bound) -> list[list[torch.Tensor]]:
    """Per depth 1..``spec.depth`` + 1 (the stem, every block, the output),
    the parts of its feature block: (N, units, A) matrices whose Grams are
    taken, and (N, D) vectors that are invariant already; the last depth
    holds the output response (see the module doc)."""
    return {"resmlp": _resmlp_blocks, "resnet": _resnet_blocks, "transformer": _transformer_blocks}[spec.kind](
        s, spec, bound)
