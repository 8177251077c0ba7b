"""Batched multi-seed training: K seeds of one (arch, problem, config) at once.

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

The K losses are summed before ``backward``; the seeds share no parameter, so
each seed's gradient is that of its own loss. SGD with momentum, weight
decay, the learning-rate schedule and gradient-norm clipping are applied per
seed with PyTorch's formulas. Each seed keeps the per-seed loop's
initialization (``training.init_model``, drawn by ``archs.initial_state``)
and mini-batch order
(``training.order_generator``), so the engine reproduces ``training.train_run``
up to float rounding (``tests/test_engine.py`` checks weights, accuracies and
chain features).

On CUDA the full-size step can be captured in a CUDA graph (one launch per
step); matmuls may use TF32 (CUDA) or the forward pass bfloat16 autocast
(CPU or CUDA). Both choices are recorded in each run's metrics.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .archs import ArchSpec, initial_state, param_shapes, pooled_sizes, resnet_strides
from .datasets import Dataset
from .errors import DivergenceError, SpecError
from .runs import PRECISIONS, RunKey
from .archs import finite
from .training import TrainedRun, divergence, order_generator, problem_tensors, run_seed

BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # nn.BatchNorm defaults, used by build()
EVAL_CHUNK = 2048  # examples per evaluation pass
CPU_STACK_BYTES = 32 << 20  # CPU: stacked parameters of one batch (see max_seeds)
CPU_SEED_BYTES = 2 << 20  # CPU: parameters per seed from which seeds train one at a time (see max_seeds)
CONV_GROUPS = 16  # seeds per grouped-convolution call (see _grouped_conv)


@dataclass(frozen=True)
class EngineOptions:
    """``precision``: ``fp32`` (PyTorch's defaults, as the per-seed loop),
    ``tf32`` (TF32 matmuls on CUDA: faster, ~1e-3 relative rounding; cuDNN
    convolutions may use TF32 by PyTorch's own default anyway) or ``bf16``
    (the forward pass under bfloat16 autocast, CPU or CUDA; parameters,
    gradients, loss and optimizer stay float32). ``cuda_graph``: capture the
    full-size step in a CUDA graph on CUDA (same numbers, one launch per
    step)."""

    precision: str = "fp32"
    cuda_graph: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise SpecError(f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")

    def effective(self, device: torch.device) -> str:
        """The precision used on ``device`` (TF32 exists only on CUDA)."""
        return "fp32" if self.precision == "tf32" and device.type != "cuda" else self.precision


# --- the batched forward pass --------------------------------------------------

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


# --- memory and the number of seeds per batch -----------------------------------

def _activation_floats(spec: ArchSpec) -> int:
    """Floats of activations kept per example for backward (rough upper bound)."""
    if spec.kind == "mlp":
        return 3 * sum(spec.widths) + spec.input_shape[0]
    if spec.kind == "resmlp":
        d, h = spec.widths
        return spec.input_shape[0] + d + spec.blocks * (3 * h + 2 * d)
    if spec.kind == "resnet":  # every conv keeps ~6 maps (conv, BN, ReLU, sum), at its stage's resolution
        spatial = math.prod(spec.input_shape[1:])
        scale = 2 ** (len(spec.input_shape) - 1)
        return math.prod(spec.input_shape) + sum(6 * (2 * spec.blocks + 1) * w * spatial // scale ** s
                                                 for s, w in enumerate(spec.widths))
    if spec.kind == "transformer":  # per token: LayerNorms, q/k/v/o, MLP; attention maps per head
        steps, (d, h) = spec.input_shape[0], spec.widths
        return steps * (spec.input_shape[1] + d + spec.blocks * (10 * d + 3 * h + 3 * spec.heads * steps))
    if spec.kind == "cnn":
        spatial, total = math.prod(spec.input_shape[1:]), 0
        for width, pooled in zip(spec.widths, pooled_sizes(spec)):
            total += 5 * width * spatial
            spatial //= 2 ** (len(spec.input_shape) - 1) if pooled else 1
        return total + math.prod(spec.input_shape)
    gates = 3 if spec.kind == "gru" else 1
    return spec.input_shape[0] * (sum(spec.widths) * (3 + 4 * gates) + spec.input_shape[1])


def max_seeds(spec: ArchSpec, batch_size: int, device: str | torch.device = "cpu") -> int:
    """The largest K whose training state fits in a quarter of the *total*
    memory of ``device`` (at least 1): a function of the spec and the kind of
    device only, never of what happens to be free, so one command on one
    kind of machine batches its seeds, and so writes its tables, the same
    way every time. On the CPU, batching removes per-operation overhead,
    which large networks do not have: K is capped so that the stacked
    parameters stay within ``CPU_STACK_BYTES``, and is 1 (the per-seed loop)
    from ``CPU_SEED_BYTES`` of parameters per seed (the measurements behind
    both are in benchmarks/RESULTS.md)."""
    device = torch.device(device)
    n_params = sum(math.prod(s) for s in param_shapes(spec).values())
    if device.type == "cuda":
        total, cap = torch.cuda.get_device_properties(device).total_memory, None
    else:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        cap = 1 if 4 * n_params >= CPU_SEED_BYTES else CPU_STACK_BYTES // (4 * n_params)
    per_seed = 4 * (4 * n_params + max(batch_size, EVAL_CHUNK) * _activation_floats(spec))
    fits = int(total // 4 // per_seed)
    return max(1, fits if cap is None else min(fits, cap))


# --- training -----------------------------------------------------------------

def _check_batch(keys: Sequence[RunKey]) -> RunKey:
    if not keys:
        raise SpecError("train_batch needs at least one run")
    first = keys[0]
    same = {(k.dataset, k.fingerprint, k.problem, k.arch, k.spec, k.config) for k in keys}
    if len(same) != 1:
        raise SpecError("train_batch: all runs must share dataset, problem, arch and training config")
    if len({k.seed for k in keys}) != len(keys):
        raise SpecError("train_batch: seeds must be distinct")
    return first


def _stack_init(keys: Sequence[RunKey], device: torch.device) -> tuple[dict, dict]:
    """Each run's initialization (``training.init_model``, bit for bit, but
    from private generators: concurrent tasks do not queue on the global RNG
    lock), stacked: (parameters, buffers)."""
    states = [initial_state(k.spec, run_seed(k, "init")) for k in keys]
    params, buffers = {}, {}
    for name in states[0]:
        t = torch.stack([s[name] for s in states]).to(device)
        (buffers if _is_buffer(name) else params)[name] = t
    for t in params.values():
        t.requires_grad_(True)
    return params, buffers


def _is_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


@contextmanager
def _tf32(enabled: bool):
    """Allow TF32 matmuls (and convolutions) while training when ``enabled``;
    otherwise PyTorch's defaults hold, as in the per-seed loop (fp32
    matmuls; cuDNN convolutions may use TF32 by PyTorch's own default)."""
    if not enabled:
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class _Trainer:
    """The state of K networks being trained together, and one SGD step."""

    def __init__(self, keys: Sequence[RunKey], dataset: Dataset, device: torch.device, bf16: bool = False):
        first = keys[0]
        self.bf16 = bf16
        self.spec, self.cfg, self.k = first.spec, first.config, len(keys)
        self.params, self.buffers = _stack_init(keys, device)
        self.momentum = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.batch_counts = [t for n, t in self.buffers.items() if n.endswith("num_batches_tracked")]
        self.xtr, self.ytr = (t.to(device) for t in problem_tensors(first, dataset, "train"))
        self.xte, self.yte = (t.to(device) for t in problem_tensors(first, dataset, "test"))
        self.neg_lr = torch.zeros((), device=device)  # -lr, a tensor so a captured step sees updates
        self.loss_sum = torch.zeros(self.k, device=device, dtype=torch.float64)

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """Float32 logits of the K networks (the pass itself in bfloat16 under ``bf16``)."""
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            return forward(self.spec, self.params, self.buffers, x, train).float()

    def step(self, idx: torch.Tensor) -> None:
        """One SGD step of every seed on its mini-batch ``idx`` (K, B)."""
        cfg = self.cfg
        x = self.xtr[idx]  # (K, B, *input)
        y = self.ytr[idx]
        logits = self.forward(x, train=True)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(self.k, -1).mean(1)
        names = list(self.params)
        grads = torch.autograd.grad(loss.sum(), [self.params[n] for n in names])
        if cfg.grad_clip is not None:  # torch.nn.utils.clip_grad_norm_, per seed
            norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)
            coef = (cfg.grad_clip / (norms + 1e-6)).clamp(max=1.0)
            for g in grads:  # the gradients are ours: update them in place, no new large buffers
                g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))
        with torch.no_grad():
            for name, g in zip(names, grads):  # torch.optim.SGD (dampening 0, no Nesterov)
                p, buf = self.params[name], self.momentum[name]
                if cfg.weight_decay:
                    g.add_(p, alpha=cfg.weight_decay)
                torch.add(g, buf, alpha=cfg.momentum, out=buf)  # buf = momentum·buf + g, one pass
                p.addcmul_(buf, self.neg_lr)
            for t in self.batch_counts:
                t.add_(1)
            self.loss_sum.add_(loss.detach().double() * idx.shape[1])

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-seed accuracy (K,) in eval mode."""
        correct = torch.zeros(self.k, device=x.device, dtype=torch.float64)
        for lo in range(0, len(y), EVAL_CHUNK):
            xb = x[lo:lo + EVAL_CHUNK]
            pred = self.forward(xb.expand(self.k, *xb.shape), train=False).argmax(-1)
            correct += (pred == y[lo:lo + EVAL_CHUNK]).double().sum(1)
        return correct / len(y)

    def snapshot(self) -> list[dict[str, torch.Tensor]]:
        names = list(param_shapes(self.spec))
        state = {**self.params, **self.buffers}
        cpu = {n: state[n].detach().to("cpu", copy=True) for n in names}
        return [{n: cpu[n][i] for n in names} for i in range(self.k)]


class _GraphedStep:
    """The full-size step of a ``_Trainer`` captured in a CUDA graph.

    Warm-up runs (on the capture stream) change the training state, so the
    state is saved before and restored after; replaying the graph then runs
    exactly the eager step on the indices copied into ``self.idx``."""

    def __init__(self, trainer: _Trainer, batch: int):
        self.idx = torch.zeros(trainer.k, batch, dtype=torch.long, device=trainer.xtr.device)
        tensors = [*trainer.params.values(), *trainer.buffers.values(), *trainer.momentum.values(),
                   trainer.loss_sum]
        saved = [t.detach().clone() for t in tensors]
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    trainer.step(self.idx)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=stream):
                trainer.step(self.idx)
        finally:
            with torch.no_grad():
                for t, s in zip(tensors, saved):
                    t.copy_(s)

    def __call__(self, idx: torch.Tensor) -> None:
        self.idx.copy_(idx)
        self.graph.replay()


def _step_function(trainer: _Trainer, batch: int, use_graph: bool):
    """(step for full-size batches, whether it is a CUDA graph). A capture
    that fails falls back to the eager step, with a warning."""
    if use_graph:
        try:
            return _GraphedStep(trainer, batch), True
        except RuntimeError as exc:
            warnings.warn(f"CUDA graph capture failed, training eagerly: {str(exc)[:200]}", RuntimeWarning)
    return trainer.step, False


def train_batch(keys: Sequence[RunKey], dataset: Dataset, device: str = "cpu",
                options: EngineOptions = EngineOptions()) -> list[TrainedRun | DivergenceError]:
    """Train the runs ``keys`` (same dataset, problem, arch and config;
    distinct seeds) together. Returns, in the order of ``keys``, a
    ``TrainedRun`` per run or the ``DivergenceError`` of a run whose loss or
    weights became non-finite (the other seeds are unaffected)."""
    first = _check_batch(keys)
    t0 = time.perf_counter()
    dev = torch.device(device)
    cfg = first.config
    precision = options.effective(dev)
    with _tf32(precision == "tf32"):
        tr = _Trainer(keys, dataset, dev, bf16=precision == "bf16")
        n = len(tr.ytr)
        full = n // cfg.batch_size * cfg.batch_size
        graphed, used_graph = _step_function(tr, cfg.batch_size, options.cuda_graph and dev.type == "cuda" and full)
        gens = [order_generator(k) for k in keys]
        checkpoints = {0: tr.snapshot()} if 0 in cfg.checkpoints else {}
        curves: list[list[float]] = [[] for _ in keys]
        for epoch in range(cfg.epochs):
            tr.neg_lr.fill_(-cfg.lr_at(epoch))
            tr.loss_sum.zero_()
            order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(dev)
            for start in range(0, full, cfg.batch_size):
                graphed(order[:, start:start + cfg.batch_size])
            if full < n:
                tr.step(order[:, full:])
            for curve, loss in zip(curves, (tr.loss_sum / n).tolist()):
                curve.append(loss)
            if epoch + 1 in cfg.checkpoints:
                checkpoints[epoch + 1] = tr.snapshot()
        test_acc, train_acc = tr.accuracy(tr.xte, tr.yte).tolist(), tr.accuracy(tr.xtr, tr.ytr).tolist()
    seconds = (time.perf_counter() - t0) / len(keys)
    engine = {"engine": "batched", "batch_seeds": len(keys), "precision": precision, "cuda_graph": used_graph}
    out: list[TrainedRun | DivergenceError] = []
    for i, key in enumerate(keys):
        bad = next((e for e, loss in enumerate(curves[i]) if not math.isfinite(loss)), None)
        if bad is not None:
            out.append(divergence(key, f"loss is {curves[i][bad]} in epoch {bad + 1}", bad + 1, curves[i][bad]))
            continue
        if not finite(checkpoints[cfg.epochs][i]):
            out.append(divergence(key, "non-finite weights after training"))
            continue
        metrics = {"test_accuracy": test_acc[i], "train_accuracy": train_acc[i], "train_loss": curves[i][-1],
                   "loss_curve": curves[i], "train_seconds": seconds, "n_train": int(n), "n_test": len(tr.yte),
                   **engine}
        out.append(TrainedRun(key, {e: c[i] for e, c in checkpoints.items()}, metrics, device=str(dev)))
    return out
