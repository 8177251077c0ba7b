"""CIFAR-10/100 python folders, each batch read with the restricted
unpickler."""
from __future__ import annotations

import math

import numpy as np

from ..errors import DatasetError
from ..uris import redact
from .base import Dataset, _make
from .source import _list, _read_all, stem
from .unpickle import read_cifar_batch


def _cifar_arrays(batch: dict, label_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3, s, s) uint8, labels (n,)) of a decoded batch: ``data``
    must be an (n, 3·s·s) uint8 array and the labels n whole numbers."""
    if "data" not in batch or label_key not in batch:
        raise DatasetError(f"{where}: CIFAR batch without 'data' and '{label_key}'")
    x, labels = batch["data"], batch[label_key]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2:
        raise DatasetError(f"{where}: CIFAR 'data' must be a 2-D uint8 array "
                           f"(got {type(x).__name__} {getattr(x, 'dtype', '')} {getattr(x, 'shape', '')})")
    side = math.isqrt(x.shape[1] // 3)
    if x.shape[1] != 3 * side * side or side == 0:
        raise DatasetError(f"{where}: CIFAR rows hold {x.shape[1]} values, not 3 square colour planes")
    if isinstance(labels, np.ndarray):
        labels = labels.tolist() if labels.ndim == 1 and labels.dtype.kind in "iu" else None
    if not isinstance(labels, list) or len(labels) != len(x) or not all(type(v) is int for v in labels):
        raise DatasetError(f"{where}: '{label_key}' must be {len(x)} whole numbers, one per image")
    return x.reshape(len(x), 3, side, side), np.asarray(labels, dtype=np.int64)


def load_cifar(uri: str, name: str | None = None, storage_options: dict | None = None) -> Dataset:
    """A CIFAR-10 (``data_batch_*``, ``test_batch``) or CIFAR-100 (``train``,
    ``test``; fine labels) python folder. Images become ``(n, 3, 32, 32)``."""
    files, where = _list(uri, storage_options), redact(uri)
    if "train" in files and "test" in files:
        train_files, test_files, label_key = ["train"], ["test"], "fine_labels"
    else:
        train_files = [f for f in files if f.startswith("data_batch")]
        test_files, label_key = [f for f in files if f == "test_batch"], "labels"
    if not train_files or not test_files:
        raise DatasetError(f"{where}: no CIFAR batches (data_batch_*/test_batch or train/test)")

    def read(names):
        parts = [_cifar_arrays(read_cifar_batch(_read_all(f"{uri.rstrip('/')}/{f}", storage_options), f),
                               label_key, f"{where}/{f}") for f in names]
        if len({p[0].shape[1:] for p in parts}) > 1:
            raise DatasetError(f"{where}: CIFAR batches of different image sizes")
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    return _make(name or stem(uri), *read(train_files), *read(test_files), source=where)
