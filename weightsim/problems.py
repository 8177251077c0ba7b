"""Problems: labelled sub-problems of a dataset that one network learns.

``make_problems`` draws class groups deterministically from the dataset's
classes: first a round of disjoint groups (as the paper's disjoint CIFAR-100
pairs), then further seeded rounds of disjoint groups, never repeating a
group, until ``n`` problems exist. Each problem relabels its classes
``0..k-1`` in the order listed and keeps the dataset's own train/test split.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .datasets import Dataset
from .errors import DatasetError


@dataclass(frozen=True)
class Problem:
    """Classes of the dataset (original labels), relabelled ``0..k-1``."""

    classes: tuple[int, ...]

    @property
    def name(self) -> str:
        return "v".join(str(c) for c in self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def parse(cls, name: str) -> "Problem":
        try:
            return cls(tuple(int(c) for c in name.split("v")))
        except ValueError:
            raise DatasetError(f"bad problem name {name!r}: expected e.g. '3v8'") from None

    def select(self, dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and relabelled targets of this problem in ``split``."""
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        lookup = {c: i for i, c in enumerate(self.classes)}
        mask = np.isin(y, self.classes)
        if not mask.any():
            raise DatasetError(f"problem {self.name}: no {split} examples in dataset {dataset.name}")
        return x[mask], np.array([lookup[int(c)] for c in y[mask]], dtype=np.int64)


def max_problems(num_classes: int, k: int = 2) -> int:
    return math.comb(num_classes, k)


def make_problems(dataset: Dataset, n: int, k: int = 2, seed: int = 0) -> list[Problem]:
    """``n`` distinct ``k``-class problems of ``dataset`` (deterministic)."""
    classes = [int(c) for c in dataset.classes]
    if k < 2 or k > len(classes):
        raise DatasetError(f"problems need 2 <= k <= {len(classes)} classes (got k={k})")
    limit = max_problems(len(classes), k)
    if not 1 <= n <= limit:
        raise DatasetError(f"dataset {dataset.name} has {len(classes)} classes: between 1 and {limit} "
                           f"problems of {k} classes are possible (got {n})")
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    for _ in range(64):  # seeded rounds of disjoint groups
        order = rng.permutation(classes)
        for i in range(0, len(order) - k + 1, k):
            group = tuple(int(c) for c in order[i:i + k])
            key = tuple(sorted(group))
            if key not in seen:
                seen.add(key)
                chosen.append(group)
            if len(chosen) == n:
                return [Problem(g) for g in chosen]
    rest = [g for g in itertools.combinations(classes, k) if g not in seen]  # exhaust the remainder
    return [Problem(g) for g in chosen + rest[: n - len(chosen)]]
