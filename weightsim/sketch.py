"""Count sketch: a fixed, seeded signed hashing of coordinates that bounds
the length of a representation (``representations.Settings``). It is one
linear map, the same for every run: inner products are kept in expectation,
and invariance of the features it is applied to is kept exactly."""
from __future__ import annotations

import functools
import hashlib

import torch


@functools.lru_cache(maxsize=16)
def _sketch_map(d: int, dim: int, tag: str) -> tuple[torch.Tensor, torch.Tensor]:
    seed = int.from_bytes(hashlib.sha256(f"weightsim-sketch|{tag}|{d}|{dim}".encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(dim, (d,), generator=g), torch.randint(2, (d,), generator=g).to(torch.float64) * 2 - 1


def sketch(x: torch.Tensor, dim: int, tag: str) -> torch.Tensor:
    """(N, D) → (N, min(D, dim)): ``x`` itself when short enough, else its
    count sketch (coordinate ``j`` added with a fixed random sign into a fixed
    random one of ``dim`` buckets; the map depends on ``D``, ``dim`` and
    ``tag`` only)."""
    if x.shape[1] <= dim:
        return x
    idx, sign = (t.to(x.device) for t in _sketch_map(x.shape[1], dim, tag))
    return torch.zeros(x.shape[0], dim, dtype=x.dtype, device=x.device).index_add_(1, idx, x * sign.to(x.dtype))
