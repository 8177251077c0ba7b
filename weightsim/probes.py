"""Probe inputs of function-based representations (``activations``):
``P`` examples of a dataset's test split, round-robin over its classes in a
seeded order, so every run of a solution set (of every problem) is compared
on the same inputs."""
from __future__ import annotations

import functools

import numpy as np

from .datasets import load_dataset
from .errors import WeightsimError


@functools.lru_cache(maxsize=8)
def probe_inputs(data: str, fingerprint: str, n: int, seed: int = 0) -> np.ndarray:
    """(P, *example shape) float32 probe inputs of dataset ``data`` (a name or
    URI as ``load_dataset`` takes it), which must be the version the runs
    were trained on (``fingerprint``)."""
    d = load_dataset(data)
    if d.fingerprint != fingerprint:
        raise WeightsimError(f"dataset {data} is not the version these runs were trained on (fingerprint "
                             f"{d.fingerprint}, the runs' {fingerprint}): its probe inputs would not be theirs")
    return d.x_test[probe_indices(d.y_test, n, seed)]


def probe_indices(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``min(n, len(y))`` indices into ``y``: classes taken in turn, each
    class's examples in a seeded random order."""
    order = np.random.default_rng(seed).permutation(len(y))
    rank = np.empty(len(y), np.int64)
    for c in np.unique(y):
        mine = order[y[order] == c]
        rank[mine] = np.arange(len(mine))
    return np.lexsort((y, rank))[:n]
