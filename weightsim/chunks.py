"""Cutting a sequence into consecutive pieces (Python 3.11 has no
``itertools.batched``)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

S = TypeVar("S", bound=Sequence)


def chunked(items: S, size: int) -> list[S]:
    """``items`` cut into consecutive slices of ``size`` (the last one
    shorter), each of the type slicing ``items`` gives (a list of lists, a
    range of ranges …); none for empty ``items``."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1 (got {size})")
    return [items[i:i + size] for i in range(0, len(items), size)]
