"""The batched forward pass of K stacked networks of one arch: what training
(``engine``) and function-based representations (``activations``) share.

Every tensor of the K networks is stacked along a leading seed axis and the
forward pass is written as batched linear algebra over that axis:

- mlp: ``baddbmm`` per layer, (K, B, I) @ (K, I, O);
- cnn: grouped convolutions on (B, K·C, …) activations, ``CONV_GROUPS``
  seeds per call whatever K is (so a network's numbers do not depend on how
  many seeds train beside it), and BatchNorm as plain BatchNorm over K·C
  channels: batch statistics and running statistics per seed, exactly as K
  separate networks;
- rnn / gru: the input projections of all time steps in one ``bmm``, then the
  recurrence step by step with one ``baddbmm`` per step (the cuDNN kernels of
  ``nn.RNN``/``nn.GRU`` cannot be batched over weights);
- resmlp: ``baddbmm`` per layer, the stream added back;
- resnet: the cnn's grouped convolutions (strided where a stage opens) and
  BatchNorm over K·C channels, the shortcut added on the same layout;
- transformer: token projections as ``baddbmm`` over (K, B·T, d), attention
  as batched matmuls over (K, B, heads), LayerNorm without affine followed by
  each seed's gain and bias.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .archs import ArchSpec, pooled_sizes, resnet_strides

BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # nn.BatchNorm defaults, used by build()
CONV_GROUPS = 16  # seeds per grouped-convolution call (see _grouped_conv)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """(K, B, I) @ (K, O, I)ᵀ + (K, O) → (K, B, O)."""
    if b is None:
        return torch.bmm(x, w.transpose(1, 2))
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


def _mlp(spec: ArchSpec, p: dict, x: torch.Tensor, taps: list | None = None) -> torch.Tensor:
    act = torch.relu if spec.activation == "relu" else torch.tanh
    for i in range(spec.depth):
        x = act(_linear(x, p[f"layers.{i}.weight"], p.get(f"layers.{i}.bias")))
        if taps is not None:
            taps.append(x)
    return x


def _grouped_conv(conv, h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, k: int,
                  pad: int, stride: int = 1) -> torch.Tensor:
    """The K seeds' convolutions on (B, K·C, …) activations as grouped
    convolutions of exactly ``CONV_GROUPS`` groups each (the last one filled
    up with zero groups): the kernel a backend picks depends on the number
    of groups, so a fixed number keeps each seed's numbers independent of K."""
    c, o = h.shape[1] // k, w.shape[1]
    w = w.reshape(-1, *w.shape[2:])
    bias = None if bias is None else bias.reshape(-1)
    outs = []
    for lo in range(0, k, CONV_GROUPS):
        n = min(CONV_GROUPS, k - lo)
        hh, ww = h[:, lo * c:(lo + n) * c], w[lo * o:(lo + n) * o]
        bb = None if bias is None else bias[lo * o:(lo + n) * o]
        if n < CONV_GROUPS:
            ghost = CONV_GROUPS - n
            hh = torch.cat([hh, hh.new_zeros(hh.shape[0], ghost * c, *hh.shape[2:])], 1)
            ww = torch.cat([ww, ww.new_zeros(ghost * o, *ww.shape[1:])])
            bb = None if bb is None else torch.cat([bb, bb.new_zeros(ghost * o)])
        outs.append(conv(hh, ww, bb, stride=stride, padding=pad, groups=CONV_GROUPS)[:, :n * o])
    return outs[0] if len(outs) == 1 else torch.cat(outs, 1)


def _batch_norm(h: torch.Tensor, p: dict, buffers: dict, name: str, train: bool) -> torch.Tensor:
    """BatchNorm ``name`` of K seeds on (B, K·C, …): one BatchNorm over K·C
    channels (statistics per seed and channel; train mode updates the buffers)."""
    return F.batch_norm(h, buffers[name + "running_mean"].view(-1), buffers[name + "running_var"].view(-1),
                        p[name + "weight"].reshape(-1), p[name + "bias"].reshape(-1), train, BN_MOMENTUM, BN_EPS)


def _cnn(spec: ArchSpec, p: dict, buffers: dict, x: torch.Tensor, train: bool, taps: list | None = None
         ) -> torch.Tensor:
    k, b = x.shape[:2]
    two_d = len(spec.input_shape) == 3
    conv = F.conv2d if two_d else F.conv1d
    pool = F.max_pool2d if two_d else F.max_pool1d
    act = torch.relu if spec.activation == "relu" else torch.tanh
    h = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])  # (B, K·C, *spatial)
    for i, pooled in enumerate(pooled_sizes(spec)):
        h = _grouped_conv(conv, h, p[f"convs.{i}.weight"], p.get(f"convs.{i}.bias"), k, spec.kernel_size // 2)
        if spec.batchnorm:
            h = _batch_norm(h, p, buffers, f"norms.{i}.", train)
        h = act(h)
        if taps is not None:  # each channel's mean over the feature map: (K, B, C)
            taps.append(h.flatten(2).mean(-1).view(b, k, -1).transpose(0, 1))
        if pooled:
            h = pool(h, 2)
    return h.flatten(2).mean(-1).view(b, k, -1).transpose(0, 1)  # (K, B, C_last)


def _resmlp(spec: ArchSpec, p: dict, x: torch.Tensor, taps: list | None = None) -> torch.Tensor:
    h = _linear(x, p["stem.weight"], p.get("stem.bias"))
    for i in range(-1, spec.blocks):
        if i >= 0:
            q = f"blocks.{i}."
            h = h + _linear(torch.relu(_linear(h, p[q + "fc1.weight"], p.get(q + "fc1.bias"))), p[q + "fc2.weight"],
                            p.get(q + "fc2.bias"))
        if taps is not None:  # the stream after the stem and after every block: (K, B, d)
            taps.append(h)
    return h


def _resnet(spec: ArchSpec, p: dict, buffers: dict, x: torch.Tensor, train: bool, taps: list | None = None
            ) -> torch.Tensor:
    k, b = x.shape[:2]
    conv = F.conv2d if len(spec.input_shape) == 3 else F.conv1d

    def conv_bn(h, name, bn, stride, pad):
        return _batch_norm(_grouped_conv(conv, h, p[name + "weight"], None, k, pad, stride), p, buffers, bn, train)

    def tap(h):  # each channel's mean over the feature map: (K, B, C)
        if taps is not None:
            taps.append(h.flatten(2).mean(-1).view(b, k, -1).transpose(0, 1))

    pad = spec.kernel_size // 2
    h = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])  # (B, K·C, *spatial)
    h = torch.relu(conv_bn(h, "stem.", "stem_bn.", 1, pad))
    tap(h)
    for s, strides in enumerate(resnet_strides(spec)):
        for j, stride in enumerate(strides):
            q = f"stages.{s}.{j}."
            y = conv_bn(torch.relu(conv_bn(h, q + "conv1.", q + "bn1.", stride, pad)), q + "conv2.", q + "bn2.", 1, pad)
            if q + "downsample.0.weight" in p:
                h = conv_bn(h, q + "downsample.0.", q + "downsample.1.", stride, 0)
            h = torch.relu(y + h)
            tap(h)
    return h.flatten(2).mean(-1).view(b, k, -1).transpose(0, 1)  # (K, B, C_last)


def _layer_norm(h: torch.Tensor, p: dict, name: str) -> torch.Tensor:
    """LayerNorm ``name`` of K seeds on (K, B, T, d)."""
    k = h.shape[0]
    h = F.layer_norm(h, h.shape[-1:], eps=1e-5) * p[name + "weight"].view(k, 1, 1, -1)
    return h if name + "bias" not in p else h + p[name + "bias"].view(k, 1, 1, -1)


def _transformer(spec: ArchSpec, p: dict, x: torch.Tensor, taps: list | None = None) -> torch.Tensor:
    k, b, steps = x.shape[:3]
    d, heads = spec.widths[0], spec.heads

    def lin(h, name):  # (K, B, T, ·) → (K, B, T, out)
        return _linear(h.reshape(k, b * steps, -1), p[name + "weight"], p.get(name + "bias")).view(k, b, steps, -1)

    def tap(h):  # the stream after the stem and after every block, every token: (K, B, T·d)
        if taps is not None:
            taps.append(h.reshape(k, b, -1))

    h = lin(x, "stem.") + p["pos.weight"].unsqueeze(1)
    tap(h)
    for i in range(spec.blocks):
        q = f"blocks.{i}."
        a = _layer_norm(h, p, q + "ln1.")
        qh, kh, vh = (lin(a, q + f"attn.{n}.").view(k, b, steps, heads, -1).transpose(2, 3) for n in "qkv")
        att = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d // heads), -1)
        h = h + lin((att @ vh).transpose(2, 3).reshape(k, b, steps, d), q + "attn.o.")
        h = h + lin(torch.relu(lin(_layer_norm(h, p, q + "ln2."), q + "fc1.")), q + "fc2.")
        tap(h)
    return h.mean(2)


def _recurrent(spec: ArchSpec, p: dict, x: torch.Tensor, taps: list | None = None) -> torch.Tensor:
    """x: (K, B, T, F) → the top layer's last hidden state (K, B, H)."""
    k, b, steps = x.shape[:3]
    act = torch.relu if spec.activation == "relu" else torch.tanh
    for i, width in enumerate(spec.widths):
        name = f"rnns.{i}."
        w_hh_t = p[name + "weight_hh_l0"].transpose(1, 2)
        b_hh = p.get(name + "bias_hh_l0")
        xi = _linear(x.reshape(k, b * steps, -1), p[name + "weight_ih_l0"], p.get(name + "bias_ih_l0"))
        xi = xi.view(k, b, steps, -1)
        h = x.new_zeros(k, b, width)
        outs = []
        for t in range(steps):
            hh = torch.bmm(h, w_hh_t) if b_hh is None else torch.baddbmm(b_hh.unsqueeze(1), h, w_hh_t)
            if spec.kind == "rnn":
                h = act(xi[:, :, t] + hh)
            else:  # GRU, gates ordered r, z, n as in nn.GRU
                ir, iz, in_ = xi[:, :, t].chunk(3, -1)
                hr, hz, hn = hh.chunk(3, -1)
                r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                n = torch.tanh(in_ + r * hn)
                h = (1 - z) * n + z * h
            outs.append(h)
        x = torch.stack(outs, 2)
        if taps is not None:  # every step's hidden state: (K, B, T·H)
            taps.append(x.reshape(k, b, -1))
    return x[:, :, -1]


def forward(spec: ArchSpec, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
            train: bool, taps: list | None = None) -> torch.Tensor:
    """Logits (K, B, classes) of K stacked networks on x (K, B, *input_shape).

    ``params``/``buffers``: state-dict keys of ``build(spec)`` → (K, *shape).
    Equals running each network's ``build(spec)`` module on its own batch
    (in train or eval mode; train mode updates the BatchNorm buffers).
    ``taps``: a list that receives each hidden layer's activations, (K, B,
    units) for mlp, (K, B, channels) averaged over the feature map for cnn,
    (K, B, steps·units) for rnn/gru (every step's hidden state); for the
    residual families the stream after the stem and after every block
    (resnet: averaged over the feature map; transformer: every token's)."""
    if spec.kind == "mlp":
        h = _mlp(spec, params, x, taps)
    elif spec.kind == "cnn":
        h = _cnn(spec, params, buffers, x, train, taps)
    elif spec.kind == "resmlp":
        h = _resmlp(spec, params, x, taps)
    elif spec.kind == "resnet":
        h = _resnet(spec, params, buffers, x, train, taps)
    elif spec.kind == "transformer":
        h = _transformer(spec, params, x, taps)
    else:
        h = _recurrent(spec, params, x, taps)
    return _linear(h, params["out.weight"], params.get("out.bias"))
