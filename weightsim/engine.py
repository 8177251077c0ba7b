"""Batched multi-seed training: K seeds of one (arch, problem, config) at once.

The forward pass is ``forward.forward``: every tensor of the K networks
stacked along a leading seed axis, the pass written as batched linear
algebra over that axis.

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

from .archs import ArchSpec, finite, initial_state, param_shapes, pooled_sizes
from .datasets import Dataset
from .errors import DivergenceError, SpecError
from .forward import forward
from .runs import PRECISIONS, RunKey
from .training import TrainedRun, divergence, order_generator, problem_tensors, run_seed

EVAL_CHUNK = 2048  # examples per evaluation pass
CPU_STACK_BYTES = 32 << 20  # CPU: stacked parameters of one batch (see max_seeds)
CPU_SEED_BYTES = 2 << 20  # CPU: parameters per seed from which seeds train one at a time (see max_seeds)


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
