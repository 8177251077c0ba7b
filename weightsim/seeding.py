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
    """Inside: torch's global generators seeded with ``seed`` as
    ``torch.manual_seed(seed)`` seeds them (the CPU's, and every CUDA
    device's once CUDA is in use); on exit, their states from before."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(int(seed))
        if cuda:  # seeded now, not queued for a later CUDA start (that would outlive this block)
            torch.cuda.manual_seed_all(int(seed))
        yield
