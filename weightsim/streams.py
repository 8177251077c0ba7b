"""Residual streams and attention: the weight-space symmetries of ``resmlp``,
``resnet`` and ``transformer`` and their chain features (docs/method.md §6,
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

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .archs import ArchSpec, resnet_strides

Stack = dict[str, torch.Tensor]
Bound = Callable[[torch.Tensor, str], torch.Tensor]  # projects a long input axis (chain._bounded)


# --- the symmetry group ----------------------------------------------------------

# A group element: unit group name → its action. Permutations ``perm`` (N, h)
# (new unit j = old unit perm[j]) with positive ``scale`` (N, h) or None;
# ``bn:<conv>`` → (N, channels) BatchNorm scales; ``qk.<block>`` /
# ``vo.<block>`` → (N, heads, dh, dh) bases; ``kshift.<block>`` → (N, d).
Element = dict[str, object]


def _units(s: Stack, key: str, axis: int, perm: torch.Tensor, mult: torch.Tensor | None = None) -> None:
    """Permute axis ``axis`` of every network's ``key`` (network i by
    ``perm[i]``) and multiply it by ``mult`` (N, h) (in place in ``s``; a
    missing ``key``, e.g. a bias the spec leaves out, is skipped)."""
    if key not in s:
        return
    t = s[key].movedim(axis + 1, 1)
    idx = perm.view(*perm.shape, *[1] * (t.dim() - 2)).expand(-1, -1, *t.shape[2:])
    t = torch.gather(t, 1, idx)
    if mult is not None:
        t = t * mult.view(*mult.shape, *[1] * (t.dim() - 2)).to(t.dtype)
    s[key] = t.movedim(1, axis + 1)


def _stream_keys(spec: ArchSpec, s: Stack) -> list[tuple[str, list[tuple[str, int]], list[str], list[str]]]:
    """Per stream (resnet: per stage): (name, writers (key, axis) — scaled with the stream, readers (columns
    — divided), permuted-only keys (rows of the convs in front of writing BatchNorms, their statistics))."""
    if spec.kind != "resnet":
        blocks = [f"blocks.{i}." for i in range(spec.blocks)]
        writes = ("fc2.weight", "fc2.bias") + (("ln1.weight", "ln1.bias", "attn.o.weight", "attn.o.bias", "ln2.weight",
                                                "ln2.bias") if spec.kind == "transformer" else ())
        reads = ("fc1.weight",) + (("attn.q.weight", "attn.k.weight", "attn.v.weight")
                                   if spec.kind == "transformer" else ())
        writers = [("stem.weight", 0), ("stem.bias", 0)] + [(q + k, 0) for q in blocks for k in writes]
        if spec.kind == "transformer":
            writers.append(("pos.weight", 1))
        return [("stream", writers, [q + k for q in blocks for k in reads] + ["out.weight"], [])]
    out = []
    blocks = [(si, f"stages.{si}.{j}.") for si, strides in enumerate(resnet_strides(spec)) for j in range(len(strides))]
    for si in range(len(spec.widths)):
        writing = [("stem.weight", "stem_bn.")] if si == 0 else []
        readers = ["out.weight"] if si == len(spec.widths) - 1 else []
        for bs, q in blocks:
            opens = q + "downsample.0.weight" in s
            if bs == si:
                writing += [(q + "conv2.weight", q + "bn2.")] + ([(q + "downsample.0.weight", q + "downsample.1.")]
                                                                 if opens else [])
            if (bs == si and not opens) or (bs == si + 1 and opens):
                readers += [q + "conv1.weight"] + ([q + "downsample.0.weight"] if opens else [])
        out.append((f"stream{si}", [(bn + k, 0) for _, bn in writing for k in ("weight", "bias")], readers,
                    [c for c, _ in writing] + [bn + k for _, bn in writing for k in ("running_mean", "running_var")]))
    return out


def _hidden_keys(spec: ArchSpec) -> list[tuple[str, list[tuple[str, int]], list[str], list[str]]]:
    """Per block: (name, incoming (× scale), outgoing columns (÷ scale), permuted-only keys)."""
    if spec.kind != "resnet":
        return [(f"blocks.{i}.", [(f"blocks.{i}.fc1.weight", 0), (f"blocks.{i}.fc1.bias", 0)],
                 [f"blocks.{i}.fc2.weight"], []) for i in range(spec.blocks)]
    return [(q, [(q + "bn1.weight", 0), (q + "bn1.bias", 0)], [q + "conv2.weight"],
             [q + "conv1.weight", q + "bn1.running_mean", q + "bn1.running_var"])
            for q in (f"stages.{si}.{j}." for si, strides in enumerate(resnet_strides(spec)) for j in range(len(strides)))]


def _bn_pairs(spec: ArchSpec, s: Stack) -> list[tuple[str, str]]:
    """(conv weight, BatchNorm prefix) of every conv in front of a BatchNorm."""
    pairs = [("stem.weight", "stem_bn.")]
    for q in (f"stages.{si}.{j}." for si, strides in enumerate(resnet_strides(spec)) for j in range(len(strides))):
        pairs += [(q + "conv1.weight", q + "bn1."), (q + "conv2.weight", q + "bn2.")]
        if q + "downsample.0.weight" in s:
            pairs.append((q + "downsample.0.weight", q + "downsample.1."))
    return pairs


def _permute_scale(s: Stack, group: tuple, perm: torch.Tensor, scale: torch.Tensor | None) -> None:
    _, incoming, outgoing, permuted = group
    for key, axis in incoming:
        _units(s, key, axis, perm, scale)
    for key in outgoing:
        _units(s, key, 1, perm, None if scale is None else 1 / scale)
    for key in permuted:
        _units(s, key, 0, perm)


def _head_basis(s: Stack, key: str, heads: int, m: torch.Tensor) -> None:
    """Rows of head h of ``key`` (q/k/v weight or bias) → m[:, h] @ rows."""
    if key in s:
        t = s[key]
        s[key] = torch.einsum("nhij,nhj...->nhi...", m, t.reshape(t.shape[0], heads, -1, *t.shape[2:])).reshape(t.shape)


def act(s: Stack, spec: ArchSpec, element: Element) -> Stack:
    """Apply a group element (see ``Element``; absent groups act as the identity) to a stack."""
    out = dict(s)
    for group in _stream_keys(spec, s) + _hidden_keys(spec):
        if group[0] in element:
            _permute_scale(out, group, *element[group[0]])
    for conv, bn in _bn_pairs(spec, s) if spec.kind == "resnet" else []:
        if "bn:" + conv in element:
            a = element["bn:" + conv]
            ident = torch.arange(a.shape[1], device=a.device).expand(a.shape[0], -1)
            _units(out, conv, 0, ident, a)
            _units(out, bn + "running_mean", 0, ident, a)
            _units(out, bn + "running_var", 0, ident, a * a)
    d, heads = spec.widths[0], spec.heads
    for i in range(spec.blocks if spec.kind == "transformer" else 0):
        q = f"blocks.{i}.attn."
        if "heads." + q in element:
            hp = element["heads." + q]
            perm = (hp.unsqueeze(-1) * (d // heads) + torch.arange(d // heads, device=hp.device)).flatten(1)
            for name in ("q.weight", "q.bias", "k.weight", "k.bias", "v.weight", "v.bias"):
                _units(out, q + name, 0, perm)
            _units(out, q + "o.weight", 1, perm)
        if "qk." + q in element:
            a = element["qk." + q]
            for part in ("weight", "bias"):
                _head_basis(out, q + "q." + part, heads, a.transpose(-1, -2))
                _head_basis(out, q + "k." + part, heads, torch.linalg.inv(a))
        if "vo." + q in element:
            b = element["vo." + q]
            for part in ("weight", "bias"):
                _head_basis(out, q + "v." + part, heads, b)
            wo = out[q + "o.weight"]
            out[q + "o.weight"] = torch.einsum("ndhj,nhji->ndhi", wo.reshape(wo.shape[0], d, heads, -1),
                                               torch.linalg.inv(b)).reshape(wo.shape)
        if "kshift." + q in element and q + "k.bias" in out:
            out[q + "k.bias"] = out[q + "k.bias"] + element["kshift." + q]
    return out


def _positive(n: int, h: int, g: torch.Generator) -> torch.Tensor:
    return torch.exp(torch.rand(n, h, generator=g, dtype=torch.float64) * 2 - 1)


def _invertible(shape: tuple[int, ...], h: int, g: torch.Generator) -> torch.Tensor:
    """Random well-conditioned invertible h × h matrices (orthogonal · positive diagonal · orthogonal)."""
    q1, _ = torch.linalg.qr(torch.randn(*shape, h, h, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(*shape, h, h, generator=g, dtype=torch.float64))
    return q1 @ torch.diag_embed(torch.exp(torch.rand(*shape, h, generator=g, dtype=torch.float64) - 0.5)) @ q2


def _randperm(n: int, h: int, g: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randperm(h, generator=g) for _ in range(n)])


def random_element(s: Stack, spec: ArchSpec, g: torch.Generator) -> Element:
    """A random element of the family's whole group, one per network of the stack."""
    n = next(iter(s.values())).shape[0]
    el: Element = {}
    for name, incoming, _, _ in _stream_keys(spec, s) + _hidden_keys(spec):
        h = s[incoming[0][0]].shape[1]
        scaled = spec.kind == "resnet" or not name.startswith("stream")
        el[name] = (_randperm(n, h, g), _positive(n, h, g) if scaled else None)
    for conv, _ in _bn_pairs(spec, s) if spec.kind == "resnet" else []:
        el["bn:" + conv] = _positive(n, s[conv].shape[1], g)
    d, heads = spec.widths[0], spec.heads
    for i in range(spec.blocks if spec.kind == "transformer" else 0):
        q = f"blocks.{i}.attn."
        el["heads." + q] = _randperm(n, heads, g)
        el["qk." + q], el["vo." + q] = (_invertible((n, heads), d // heads, g) for _ in range(2))
        el["kshift." + q] = torch.randn(n, d, generator=g, dtype=torch.float64)
    return el


def random_symmetry_stack(s: Stack, spec: ArchSpec, g: torch.Generator) -> Stack:
    """One random element of the family's group (see the module doc) applied to every network."""
    return act(s, spec, random_element(s, spec, g))


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


# --- scale normalization and weight matching -----------------------------------------

def _identity(n: int, h: int, dev) -> torch.Tensor:
    return torch.arange(h, device=dev).expand(n, h)


def scale_normalize(s: Stack, spec: ArchSpec) -> Stack:
    """Every positively scaled unit group brought to unit norm of its
    incoming vector (block hidden units: their ``fc1`` row and bias, resnet:
    ``bn1``'s gain and bias; resnet streams: the gains and biases of all the
    BatchNorms that write a channel; convs in front of a BatchNorm: their
    rows), without reordering. The same function (resnet: up to
    BatchNorm's ``eps``)."""
    n = next(iter(s.values())).shape[0]
    el: Element = {}
    for name, incoming, _, _ in _stream_keys(spec, s) + _hidden_keys(spec):
        if spec.kind == "resnet" or not name.startswith("stream"):
            sq = sum(s[k].movedim(axis + 1, 1).reshape(n, s[k].shape[axis + 1], -1).square().sum(-1)
                     for k, axis in incoming if k in s)
            el[name] = (_identity(n, sq.shape[1], sq.device), 1 / sq.sqrt().clamp_min(1e-300))
    for conv, _ in _bn_pairs(spec, s) if spec.kind == "resnet" else []:
        el["bn:" + conv] = 1 / s[conv].flatten(2).norm(dim=-1).clamp_min(1e-300)
    return act(s, spec, el)


def _descriptors(entries: list[list[torch.Tensor]], s: Stack, spec: ArchSpec) -> dict[str, torch.Tensor]:
    """Unit group → (N, units, D) rows that follow its units (and no other
    group's): the units' responses over the input axis (``chain_blocks``);
    attention heads: the Gram of each head's write."""
    hidden = [name for name, *_ in _hidden_keys(spec)]
    blocks = entries[1:-1]
    out = {name: e[-2] for name, e in zip(hidden, blocks)}
    if spec.kind == "resnet":
        stage = [si for si, strides in enumerate(resnet_strides(spec)) for _ in strides]
        for si in range(len(spec.widths)):
            rows = ([entries[0][0]] if si == 0 else []) + [e[-1] for e, st in zip(blocks, stage) if st == si]
            out[f"stream{si}"] = torch.cat(rows, -1)
        return out
    out["stream"] = torch.cat([entries[0][0]] + [e[-1] for e in blocks], -1)
    for i, e in enumerate(blocks if spec.kind == "transformer" else []):
        writes = e[2].view(e[2].shape[0], spec.heads, spec.widths[0], -1)
        out[f"heads.blocks.{i}.attn."] = torch.einsum("nhda,nhdb->nhab", writes, writes).flatten(2)
    return out


def match_to(s: Stack, spec: ArchSpec, reference: Stack, bound: Bound) -> Stack:
    """Weight matching: every network's stream units, block hidden units and
    attention heads permuted to best match those of ``reference`` (one
    network), each group by the Hungarian algorithm on the cosine of its
    units' descriptors (``_descriptors``). The descriptors live on the
    input axis every network shares, so the groups are matched
    independently and exactly; only permutations are undone."""
    from scipy.optimize import linear_sum_assignment  # imported where used: it is slow to import

    mine, ref = (_descriptors(chain_blocks(t, spec, bound), t, spec) for t in (s, reference))
    el: Element = {}
    for name, rows in mine.items():
        a, b = (_unit_rows(t) for t in (ref[name][0], rows))
        scores = torch.einsum("jd,nkd->njk", a, b).cpu().numpy()
        perm = np.stack([linear_sum_assignment(c, maximize=True)[1] for c in scores])
        el[name] = torch.from_numpy(perm).to(rows.device) if name.startswith("heads.") else (
            torch.from_numpy(perm).to(rows.device), None)
    return act(s, spec, el)
