"""The built-in datasets: ``digits`` (scikit-learn's 8×8 digits, a fixed
stratified 75/25 split), ``mnist1d`` (generated locally, length-40 signals;
the ``mnist1d`` extra) and ``synthetic`` (seeded class-conditional
Gaussians of any shape, e.g. ``synthetic:classes=100,shape=3x32x32,train=500,test=100``),
and the on-disk cache that makes each of the first two once."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import math
import os
import sys
import zipfile

import numpy as np

from ..codedigest import code_digest
from ..errors import DatasetError
from ..extras import require
from . import base
from .base import Dataset, _make
from .source import _check_size


def cache_dir() -> str:
    """Where built-in datasets are kept once made: ``$WEIGHTSIM_CACHE``, else
    ``$XDG_CACHE_HOME/weightsim`` (default ``~/.cache/weightsim``)."""
    return os.environ.get("WEIGHTSIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "weightsim")


def _cached_builtin(name: str, package: str, make) -> Dataset:
    """The built-in ``name`` from the cache, else ``make()`` (which imports the
    generating ``package``) written to it. The file is bound to its key (the
    name, the package's version and the code that makes it), stored inside it
    and checked on read: a file made by other code, or damaged, is made
    again. A cache that cannot be written only costs the next load. Without
    the package there is nothing to key on: ``make()`` says what to install."""
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return make()
    key = f"{name} {package}=={version} code {code_digest(base, sys.modules[__name__])}"
    path = os.path.join(cache_dir(), f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz")
    with contextlib.suppress(OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return _make(name, z["x_train"], z["y_train"], z["x_test"], z["y_test"], "builtin")
    d = make()
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
        os.replace(tmp, path)
    return d


def _make_digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images / 16.0
    x = ((x - x.mean()) / x.std()).astype(np.float32)  # one global shift/scale: zero mean, unit variance
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)
    return _make("digits", xtr, ytr, xte, yte, "builtin")


def _make_mnist1d() -> Dataset:
    data = require("mnist1d.data", "mnist1d", "the built-in dataset mnist1d")
    d = data.make_dataset(data.get_dataset_args())  # generated locally, never downloaded
    return _make("mnist1d", d["x"], d["y"], d["x_test"], d["y_test"], "builtin")


@functools.lru_cache(maxsize=4)
def _digits() -> Dataset:
    return _cached_builtin("digits", "scikit-learn", _make_digits)


@functools.lru_cache(maxsize=4)
def _mnist1d() -> Dataset:
    return _cached_builtin("mnist1d", "mnist1d", _make_mnist1d)


_SYNTH_DEFAULTS = {"classes": 10, "shape": "64", "train": 100, "test": 50, "seed": 0, "noise": 1.0}


@functools.lru_cache(maxsize=8)
def synthetic(classes: int = 10, shape: tuple[int, ...] = (64,), train: int = 100, test: int = 50,
              seed: int = 0, noise: float = 1.0) -> Dataset:
    """Seeded class-conditional Gaussians: ``train``/``test`` examples per class."""
    if classes < 2 or train < 1 or test < 1 or min(shape) < 1 or noise < 0:
        raise DatasetError("synthetic: need classes>=2, train>=1, test>=1, positive shape, noise>=0")
    _check_size(4 * (classes * (train + test + 1)) * math.prod(shape), f"synthetic:classes={classes},"
                f"shape={'x'.join(map(str, shape))},train={train},test={test}", "needs")
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, *shape)).astype(np.float32)

    def draw(n):
        y = np.repeat(np.arange(classes), n)
        x = means[y] + np.float32(noise) * rng.standard_normal((len(y), *shape), dtype=np.float32)
        return x, y

    (xtr, ytr), (xte, yte) = draw(train), draw(test)
    return _make("synthetic", xtr, ytr, xte, yte, "builtin")


def _parse_synthetic(spec: str) -> Dataset:
    opts = dict(_SYNTH_DEFAULTS)
    for item in filter(None, spec.partition(":")[2].split(",")):
        key, _, value = item.partition("=")
        if key not in opts:
            raise DatasetError(f"synthetic: unknown option {key!r} (known: {', '.join(opts)})")
        opts[key] = value
    try:
        shape = tuple(int(s) for s in str(opts["shape"]).split("x"))
        return synthetic(int(opts["classes"]), shape, int(opts["train"]), int(opts["test"]),
                         int(opts["seed"]), float(opts["noise"]))
    except ValueError as exc:
        raise DatasetError(f"synthetic: bad option value ({exc})") from None
