"""Problems: labelled sub-problems of a dataset that one network learns.

``make_problems`` draws class groups deterministically from the dataset's
classes: first a round of disjoint groups (as the paper's disjoint CIFAR-100
pairs), then further seeded rounds of disjoint groups, never repeating a
group, until ``n`` problems exist. Each problem relabels its classes
``0..k-1`` in the order listed and keeps the dataset's own train/test split.
``one_vs_rest`` gives one problem per class instead: that class (label 0)
against all the others (label 1), balanced by sampling.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import DatasetError

if TYPE_CHECKING:
    from .datasets import Dataset

_NAME = re.compile(r"-?[0-9]{1,19}(v-?[0-9]{1,19})+|-?[0-9]{1,19}vrest", re.ASCII)  # labels are int64


@dataclass(frozen=True)
class Problem:
    """Classes of the dataset (original labels), relabelled ``0..k-1``; with
    ``rest``, one class (label 0) against every other class (label 1)."""

    classes: tuple[int, ...]
    rest: bool = False

    @property
    def name(self) -> str:
        return f"{self.classes[0]}vrest" if self.rest else "v".join(str(c) for c in self.classes)

    @property
    def num_classes(self) -> int:
        return 2 if self.rest else len(self.classes)

    @classmethod
    def parse(cls, name: str) -> "Problem":
        """The problem of a name: ``3v8``, ``2v7v9`` (distinct classes, in
        the order they are relabelled) or ``3vrest``."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise DatasetError(f"bad problem name {name[:40]!r}: expected e.g. '3v8', '2v7v9' or '3vrest'")
        if name.endswith("vrest"):
            return cls((int(name[:-5]),), rest=True)
        classes = tuple(int(c) for c in name.split("v"))
        if len(set(classes)) < len(classes):
            raise DatasetError(f"bad problem name {name!r}: a class appears more than once")
        return cls(classes)

    def select(self, dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and relabelled targets of this problem in ``split`` (in the
        dataset's order). One-vs-rest keeps as many examples of the rest as of
        the class (or the reverse), drawn uniformly with a seed fixed by the
        class and split: every run of the problem sees the same examples."""
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        if self.rest:
            mine = np.flatnonzero(y == self.classes[0])
            others = np.flatnonzero(y != self.classes[0])
            if not len(mine) or not len(others):
                raise DatasetError(f"problem {self.name}: needs {split} examples of class {self.classes[0]} and "
                                   f"of other classes in dataset {dataset.name}")
            rng = np.random.default_rng([self.classes[0], 0 if split == "train" else 1])
            m = min(len(mine), len(others))
            mine, others = (np.sort(rng.choice(ix, m, replace=False)) if len(ix) > m else ix
                            for ix in (mine, others))
            keep = np.sort(np.concatenate([mine, others]))
            return x[keep], (y[keep] != self.classes[0]).astype(np.int64)
        lookup = {c: i for i, c in enumerate(self.classes)}
        mask = np.isin(y, self.classes)
        if not mask.any():
            raise DatasetError(f"problem {self.name}: no {split} examples in dataset {dataset.name}")
        return x[mask], np.array([lookup[int(c)] for c in y[mask]], dtype=np.int64)

    def to_dict(self) -> dict:
        """The problem as stored in run ids and table metadata (pairs and
        groups keep the form they always had)."""
        return {"classes": list(self.classes), **({"rest": True} if self.rest else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        """The inverse of ``to_dict`` (other keys, e.g. ``name``, ignored)."""
        return cls(tuple(int(c) for c in d["classes"]), rest=d.get("rest", False) is True)


def max_problems(num_classes: int, k: int = 2, kind: str = "pairs") -> int:
    return num_classes if kind == "ovr" else math.comb(num_classes, k)


def one_vs_rest(dataset: Dataset, n: int) -> list[Problem]:
    """The one-vs-rest problems of the first ``n`` classes (sorted)."""
    classes = sorted(int(c) for c in dataset.classes)
    if not 1 <= n <= len(classes):
        raise DatasetError(f"dataset {dataset.name} has {len(classes)} classes: between 1 and {len(classes)} "
                           f"one-vs-rest problems are possible (got {n})")
    return [Problem((c,), rest=True) for c in classes[:n]]


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
