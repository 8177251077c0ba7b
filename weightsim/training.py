"""Training one run with the per-seed reference loop.

The run's seed (with its problem) fixes both the initialization
(``build(spec)`` under a derived seed) and the mini-batch order (a separate
generator), so the same ``RunKey`` gives bit-identical weights on the CPU.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .archs import build_seeded, finite
from .datasets import Dataset
from .errors import DivergenceError
from .runs import RunKey


@dataclass
class TrainedRun:
    """``checkpoints``: epoch → state dict (CPU tensors); ``metrics``: test
    accuracy, final train loss, per-epoch loss curve, wall time."""

    key: RunKey
    checkpoints: dict[int, dict[str, torch.Tensor]]
    metrics: dict = field(default_factory=dict)
    device: str = "cpu"


def run_seed(key: RunKey, purpose: str) -> int:
    """A 63-bit seed for ``purpose`` ('init' or 'order') from the run's seed and
    problem. Runs of different problems with the same seed get independent
    draws: a shared initialization would tie between-problem pairs together
    and push the untrained control below chance."""
    text = f"{purpose}|{key.problem.name}|{key.seed}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def order_generator(key: RunKey) -> torch.Generator:
    """The generator of a run's mini-batch order (independent of its init)."""
    return torch.Generator().manual_seed(run_seed(key, "order"))


def init_model(key: RunKey) -> nn.Module:
    """The run's initial network: ``build(spec)`` under the run's init seed."""
    return build_seeded(key.spec, run_seed(key, "init"))


def problem_tensors(key: RunKey, dataset: Dataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = key.problem.select(dataset, split)
    return torch.from_numpy(x.reshape(len(x), *key.spec.input_shape)), torch.from_numpy(y)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = model(x).argmax(-1)
    return float((pred == y).double().mean())


def divergence(key: RunKey, what: str, epoch: int | None = None, loss: float | None = None) -> DivergenceError:
    """The error of a run whose training became non-finite (``what``: where;
    ``epoch``, 1-based, and ``loss`` when the loss did)."""
    return DivergenceError(f"run {key.run_id} ({key.arch}, {key.problem.name}, seed {key.seed}) diverged: "
                           f"{what}; lower the learning rate", epoch, loss)


def train_run(key: RunKey, dataset: Dataset, device: str = "cpu") -> TrainedRun:
    """Train one run; raises ``DivergenceError`` on a non-finite loss."""
    t0 = time.perf_counter()
    cfg = key.config
    model = init_model(key).to(device)
    xtr, ytr = (t.to(device) for t in problem_tensors(key, dataset, "train"))
    xte, yte = (t.to(device) for t in problem_tensors(key, dataset, "test"))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = order_generator(key)
    checkpoints = {0: snapshot(model)} if 0 in cfg.checkpoints else {}
    curve: list[float] = []
    n = len(ytr)
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(epoch)
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        total = torch.zeros((), device=device, dtype=torch.float64)
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.detach().double() * len(idx)
        mean_loss = float(total) / n
        if not np.isfinite(mean_loss):
            raise divergence(key, f"loss is {mean_loss} in epoch {epoch + 1}", epoch + 1, mean_loss)
        curve.append(mean_loss)
        if epoch + 1 in cfg.checkpoints:
            checkpoints[epoch + 1] = snapshot(model)
    final = checkpoints[cfg.epochs]
    if not finite(final):
        raise divergence(key, "non-finite weights after training")
    metrics = {"test_accuracy": accuracy(model, xte, yte), "train_accuracy": accuracy(model, xtr, ytr),
               "train_loss": curve[-1], "loss_curve": curve, "train_seconds": time.perf_counter() - t0,
               "n_train": int(n), "n_test": int(len(yte)), "engine": "loop", "batch_seeds": 1, "precision": "fp32"}
    return TrainedRun(key, checkpoints, metrics, device=str(device))
