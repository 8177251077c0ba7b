"""Seeded draws from torch's global random generator that leave it as it was.

Most of weightsim draws from its own ``torch.Generator`` (``training``,
``archs``, ``chain``); a few torch routines take no generator
(``torch.svd_lowrank``). They run inside ``seeded(seed)``: the same seed
gives the same draws, and the caller's global RNG state is untouched.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Inside: torch's global CPU generator seeded with ``seed`` (exactly as
    ``torch.manual_seed(seed)`` seeds it); on exit, its state from before.
    CUDA generators are neither seeded nor touched: for CPU tensors only."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield
