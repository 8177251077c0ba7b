"""Datasets: labelled examples with the dataset's own train/test split.

Built-ins: ``digits`` (scikit-learn's 8×8 digits, a fixed stratified 75/25
split), ``mnist1d`` (generated locally, length-40 signals) and ``synthetic``
(seeded class-conditional Gaussians of any shape, e.g.
``synthetic:classes=100,shape=3x32x32,train=500,test=100``).

User data from a local path or a URI (``s3://...``): ``.npz``
(``x_train, y_train, x_test, y_test``), Parquet (columns ``split``, ``label``
and either a list column ``x`` or one numeric column per feature), a folder of
MNIST IDX files (gzipped or not) and a folder of CIFAR-10/100 python batches
(read with a restricted unpickler that only rebuilds plain arrays, lists,
dicts, bytes and str). Every dataset carries a content fingerprint: a changed
file is a new dataset version.
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit

from ..errors import DatasetError
from ..uris import redact, resolve
from .base import Dataset
from .builtins import _digits, _mnist1d, _parse_synthetic, synthetic
from .cifar import load_cifar
from .idx import load_idx, read_idx
from .npz import load_npz
from .parquet import load_parquet
from .source import LIMIT_ENV, _list, stem
from .unpickle import read_cifar_batch

__all__ = ["BUILTINS", "FILE_KINDS", "LIMIT_ENV", "Dataset", "check_source", "dataset_name", "load_cifar",
           "load_dataset", "load_file", "load_idx", "load_npz", "load_parquet", "read_cifar_batch", "read_idx",
           "stem", "synthetic"]

BUILTINS = ("digits", "mnist1d", "synthetic")
FILE_KINDS = (".npz", ".parquet", "IDX folder", "CIFAR folder")


def load_file(uri: str, name: str | None = None, storage_options: dict | None = None) -> Dataset:
    """Load user data, choosing the reader by extension or folder contents."""
    path = urlsplit(uri).path if "://" in uri else uri
    if path.endswith(".npz"):
        return load_npz(uri, name, storage_options)
    if path.endswith(".parquet"):
        return load_parquet(uri, name, storage_options)
    files = _list(uri, storage_options)
    if any("idx" in f and "ubyte" in f for f in files):
        return load_idx(uri, name, storage_options)
    if any(f.startswith("data_batch") for f in files) or {"train", "test"} <= set(files):
        return load_cifar(uri, name, storage_options)
    raise DatasetError(f"{redact(uri)}: not a dataset (expected one of {', '.join(FILE_KINDS)})")


def dataset_name(name: str) -> str:
    """The name ``load_dataset(name)`` gives its dataset, without loading it:
    the built-in's name, else the file's stem."""
    builtin = name.partition(":")[0]
    return builtin if builtin in BUILTINS and "://" not in name else stem(name)


def load_dataset(name: str, storage_options: dict | None = None) -> Dataset:
    """A built-in by name (``digits``, ``mnist1d``, ``synthetic[:opts]``) or a
    user dataset by local path or URI."""
    check_source(name)
    if name == "digits":
        return _digits()
    if name == "mnist1d":
        return _mnist1d()
    if name == "synthetic" or name.startswith("synthetic:"):
        return _parse_synthetic(name)
    return load_file(resolve(name) if "://" in name else name, storage_options=storage_options)


def check_source(name: str) -> None:
    """Refuse a dataset name that is neither a built-in nor a path/URI
    (reads nothing: bad input answers before anything heavy loads)."""
    if not isinstance(name, str) or not name:
        raise DatasetError("no dataset given")
    if name in BUILTINS or name.startswith("synthetic:") or "://" in name or os.path.exists(name) or os.sep in name \
            or name.endswith((".npz", ".parquet")):
        return
    raise DatasetError(f"unknown dataset {name!r}: use one of {', '.join(BUILTINS)} "
                       f"or a path/URI to {', '.join(FILE_KINDS)}")
