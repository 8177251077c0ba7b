"""The ``Dataset`` value: four arrays (a train and a test split), checked
when made, with a content fingerprint; ``_make`` turns what a reader found
into one (inputs float32, labels int64) or says what is wrong with it."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError
from ..store import check_name


@dataclass(frozen=True, eq=False)
class Dataset:
    """Arrays: ``x_*`` float32 of shape ``(n, *shape)``, ``y_*`` int64 ``(n,)``."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str = "builtin"
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        _validate(self)
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        object.__setattr__(self, "fingerprint", h.hexdigest()[:16])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.y_train)

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "fingerprint": self.fingerprint,
                "shape": list(self.shape), "classes": int(len(self.classes)),
                "n_train": int(len(self.y_train)), "n_test": int(len(self.y_test))}


def _validate(d: Dataset) -> None:
    check_name(d.name, "dataset name")
    where = f"dataset {d.name}" if d.source == "builtin" else d.source
    for split in ("train", "test"):
        x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        if x.dtype != np.float32 or y.dtype != np.int64:
            raise DatasetError(f"{where}: internal arrays must be float32/int64")
        if x.ndim < 2 or len(x) != len(y) or len(y) == 0:
            raise DatasetError(f"{where}: {split} split has {len(x)} examples and {len(y)} labels")
        if not np.isfinite(x).all():
            raise DatasetError(f"{where}: {split} inputs contain NaN or inf")
    if d.x_train.shape[1:] != d.x_test.shape[1:]:
        raise DatasetError(f"{where}: train shape {d.x_train.shape[1:]} != test shape {d.x_test.shape[1:]}")
    if len(np.unique(d.y_train)) < 2:
        raise DatasetError(f"{where}: needs at least 2 classes")


def _make(name: str, xtr, ytr, xte, yte, source: str) -> Dataset:
    where = f"dataset {name}" if source == "builtin" else source

    def fx(x):
        x = np.asarray(x)
        if x.dtype == np.uint8:
            return (x.astype(np.float32) / np.float32(255))
        if x.dtype.kind not in "biuf":
            kind = "complex numbers" if x.dtype.kind == "c" else f"not real numbers ({x.dtype})"
            raise DatasetError(f"{where}: inputs are {kind}")
        if x.dtype.kind == "f" and x.size and np.nanmax(np.abs(x)) > np.finfo(np.float32).max:
            raise DatasetError(f"{where}: inputs exceed the float32 range")
        return np.ascontiguousarray(x, dtype=np.float32)

    def fy(y):
        y = np.asarray(y).reshape(-1)
        if y.dtype.kind == "u" and y.size and y.max() > np.iinfo(np.int64).max or y.dtype.kind not in "biuf":
            raise DatasetError(f"{where}: labels must be whole numbers (got {y.dtype})")
        if y.dtype.kind == "f":  # exact whole numbers only: 1e20 and 2e20 must not merge into one class
            exact = np.isfinite(y) & (np.abs(y) < 2.0 ** 53)
            if not exact.all() or not np.array_equal(np.floor(y), y):
                raise DatasetError(f"{where}: labels must be whole numbers below 2**53 "
                                   f"(e.g. {float(y[~exact | (np.floor(y) != y)][0])!r} is not)")
        return y.astype(np.int64)

    return Dataset(name, fx(xtr), fy(ytr), fx(xte), fy(yte), source)
