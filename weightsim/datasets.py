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

import functools
import gzip
import hashlib
import io
import os
import pickle
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import DatasetError
from .store import check_name, s3_options_from_env

BUILTINS = ("digits", "mnist1d", "synthetic")
FILE_KINDS = (".npz", ".parquet", "IDX folder", "CIFAR folder")


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
    for split in ("train", "test"):
        x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        if x.dtype != np.float32 or y.dtype != np.int64:
            raise DatasetError(f"dataset {d.name}: internal arrays must be float32/int64")
        if x.ndim < 2 or len(x) != len(y) or len(y) == 0:
            raise DatasetError(f"dataset {d.name}: {split} split has {len(x)} examples and {len(y)} labels")
        if not np.isfinite(x).all():
            raise DatasetError(f"dataset {d.name}: {split} inputs contain NaN or inf")
    if d.x_train.shape[1:] != d.x_test.shape[1:]:
        raise DatasetError(f"dataset {d.name}: train shape {d.x_train.shape[1:]} != test shape {d.x_test.shape[1:]}")
    if len(np.unique(d.y_train)) < 2:
        raise DatasetError(f"dataset {d.name}: needs at least 2 classes")


def _make(name: str, xtr, ytr, xte, yte, source: str) -> Dataset:
    def fx(x):
        x = np.asarray(x)
        if x.dtype == np.uint8:
            return (x.astype(np.float32) / np.float32(255))
        if not np.issubdtype(x.dtype, np.number):
            raise DatasetError(f"dataset {name}: inputs are not numeric ({x.dtype})")
        return np.ascontiguousarray(x, dtype=np.float32)

    def fy(y):
        y = np.asarray(y).reshape(-1)
        if not np.issubdtype(y.dtype, np.integer):
            if not np.issubdtype(y.dtype, np.floating) or not np.all(np.mod(y, 1) == 0):
                raise DatasetError(f"dataset {name}: labels must be integers")
        return y.astype(np.int64)

    return Dataset(name, fx(xtr), fy(ytr), fx(xte), fy(yte), source)


# --- built-ins ---------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images / 16.0
    x = ((x - x.mean()) / x.std()).astype(np.float32)  # one global shift/scale: zero mean, unit variance
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)
    return _make("digits", xtr, ytr, xte, yte, "builtin")


@functools.lru_cache(maxsize=4)
def _mnist1d() -> Dataset:
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # generated locally, never downloaded
    return _make("mnist1d", d["x"], d["y"], d["x_test"], d["y_test"], "builtin")


_SYNTH_DEFAULTS = {"classes": 10, "shape": "64", "train": 100, "test": 50, "seed": 0, "noise": 1.0}


@functools.lru_cache(maxsize=8)
def synthetic(classes: int = 10, shape: tuple[int, ...] = (64,), train: int = 100, test: int = 50,
              seed: int = 0, noise: float = 1.0) -> Dataset:
    """Seeded class-conditional Gaussians: ``train``/``test`` examples per class."""
    if classes < 2 or train < 1 or test < 1 or min(shape) < 1 or noise < 0:
        raise DatasetError("synthetic: need classes>=2, train>=1, test>=1, positive shape, noise>=0")
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


# --- file formats ------------------------------------------------------------

def _options(uri: str, storage_options: dict | None) -> dict:
    if storage_options is None and uri.startswith("s3://"):
        return s3_options_from_env()
    return storage_options or {}


def _read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    import fsspec

    try:
        with fsspec.open(uri, "rb", **_options(uri, storage_options)) as f:
            return f.read()
    except FileNotFoundError:
        raise DatasetError(f"dataset file not found: {uri}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {uri}: {exc}") from None


def _list(uri: str, storage_options: dict | None = None) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri, **_options(uri, storage_options))
    try:
        return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(f"dataset not found: {uri}") from None


def _stem(uri: str) -> str:
    base = os.path.basename(uri.rstrip("/"))
    for ext in (".npz", ".parquet"):
        base = base[: -len(ext)] if base.endswith(ext) else base
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", base).lstrip("._") or "dataset"


def load_npz(uri: str, name: str | None = None, storage_options: dict | None = None) -> Dataset:
    """``.npz`` with ``x_train, y_train, x_test, y_test`` (never with pickled objects)."""
    try:
        with np.load(io.BytesIO(_read_bytes(uri, storage_options)), allow_pickle=False) as z:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
            if missing:
                raise DatasetError(f"{uri}: missing arrays {sorted(missing)} (need x_train, y_train, x_test, y_test)")
            arrays = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{uri}: not a readable .npz file ({exc})") from None
    return _make(name or _stem(uri), *arrays, source=uri)


def load_parquet(uri: str, name: str | None = None, storage_options: dict | None = None) -> Dataset:
    """Parquet with ``split`` (train/test), ``label`` and a list column ``x``
    (shape from the file metadata key ``shape``, e.g. ``"1,28,28"``) or
    numeric feature columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(_read_bytes(uri, storage_options)))
    except pa.ArrowException as exc:
        raise DatasetError(f"{uri}: not a readable Parquet file ({exc})") from None
    cols = set(table.column_names)
    if not {"split", "label"} <= cols:
        raise DatasetError(f"{uri}: Parquet dataset needs columns 'split' and 'label'")
    split = np.asarray(table.column("split").to_pylist())
    y = table.column("label").to_numpy()
    if "x" in cols:
        x = np.stack([np.asarray(v, dtype=np.float32) for v in table.column("x").to_numpy(zero_copy_only=False)])
        meta = table.schema.metadata or {}
        if b"shape" in meta:
            x = x.reshape(len(x), *(int(s) for s in meta[b"shape"].decode().split(",")))
    else:
        feats = [c for c in table.column_names if c not in ("split", "label")]
        x = np.stack([table.column(c).to_numpy() for c in feats], axis=1)
    tr, te = split == "train", split == "test"
    return _make(name or _stem(uri), x[tr], y[tr], x[te], y[te], source=uri)


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(data: bytes, where: str = "IDX file") -> np.ndarray:
    """Decode an IDX array (gzipped or not)."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{where}: corrupt gzip ({exc})") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise DatasetError(f"{where}: not an IDX file (bad magic number)")
    ndim = data[3]
    dims = np.frombuffer(data, ">i4", ndim, 4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - 4 - 4 * ndim != expected:
        raise DatasetError(f"{where}: holds {len(data) - 4 - 4 * ndim} data bytes, header says {expected}")
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def load_idx(uri: str, name: str | None = None, storage_options: dict | None = None) -> Dataset:
    """A folder with MNIST-style ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (``.gz`` allowed)."""
    files = _list(uri, storage_options)

    def find(prefix: str, kind: str) -> np.ndarray:
        for f in files:
            if f.startswith(prefix) and kind in f:
                return read_idx(_read_bytes(f"{uri.rstrip('/')}/{f}", storage_options), f)
        raise DatasetError(f"{uri}: no {prefix}*{kind}* IDX file")

    xtr, ytr = find("train", "images"), find("train", "labels")
    xte, yte = find("t10k", "images"), find("t10k", "labels")
    return _make(name or _stem(uri), xtr, ytr, xte, yte, source=uri)


class _PlainUnpickler(pickle.Unpickler):
    """Rebuilds only plain containers and numpy arrays; anything else (a
    function, a class, ``os.system``) is refused before it is created."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # how protocol-2 pickles spell bytes; a pure str→bytes function

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: CIFAR batches hold plain data only")


def read_cifar_batch(data: bytes, where: str = "CIFAR batch") -> dict:
    """Decode one CIFAR python batch with the restricted unpickler; keys as str."""
    try:
        obj = _PlainUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any malformed or hostile pickle
        raise DatasetError(f"{where}: not a plain CIFAR batch ({exc})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: not a CIFAR batch (top level is {type(obj).__name__})")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def load_cifar(uri: str, name: str | None = None, storage_options: dict | None = None) -> Dataset:
    """A CIFAR-10 (``data_batch_*``, ``test_batch``) or CIFAR-100 (``train``,
    ``test``; fine labels) python folder. Images become ``(n, 3, 32, 32)``."""
    files = _list(uri, storage_options)
    if "train" in files and "test" in files:
        train_files, test_files, label_key = ["train"], ["test"], "fine_labels"
    else:
        train_files = [f for f in files if f.startswith("data_batch")]
        test_files, label_key = [f for f in files if f == "test_batch"], "labels"
    if not train_files or not test_files:
        raise DatasetError(f"{uri}: no CIFAR batches (data_batch_*/test_batch or train/test)")

    def read(names):
        xs, ys = [], []
        for f in names:
            b = read_cifar_batch(_read_bytes(f"{uri.rstrip('/')}/{f}", storage_options), f)
            if "data" not in b or label_key not in b:
                raise DatasetError(f"{uri}/{f}: CIFAR batch without 'data' and '{label_key}'")
            x = np.asarray(b["data"])
            if x.ndim != 2 or x.shape[1] % 3:
                raise DatasetError(f"{uri}/{f}: CIFAR data has shape {x.shape}")
            side = int(round((x.shape[1] // 3) ** 0.5))
            xs.append(x.reshape(len(x), 3, side, side))
            ys.append(np.asarray(b[label_key]))
        return np.concatenate(xs), np.concatenate(ys)

    return _make(name or _stem(uri), *read(train_files), *read(test_files), source=uri)


def load_file(uri: str, name: str | None = None, storage_options: dict | None = None) -> Dataset:
    """Load user data, choosing the reader by extension or folder contents."""
    if uri.endswith(".npz"):
        return load_npz(uri, name, storage_options)
    if uri.endswith(".parquet"):
        return load_parquet(uri, name, storage_options)
    files = _list(uri, storage_options)
    if any("idx" in f and "ubyte" in f for f in files):
        return load_idx(uri, name, storage_options)
    if any(f.startswith("data_batch") for f in files) or {"train", "test"} <= set(files):
        return load_cifar(uri, name, storage_options)
    raise DatasetError(f"{uri}: not a dataset (expected one of {', '.join(FILE_KINDS)})")


def load_dataset(name: str, storage_options: dict | None = None) -> Dataset:
    """A built-in by name (``digits``, ``mnist1d``, ``synthetic[:opts]``) or a
    user dataset by local path or URI."""
    if not isinstance(name, str) or not name:
        raise DatasetError("no dataset given")
    if name == "digits":
        return _digits()
    if name == "mnist1d":
        return _mnist1d()
    if name == "synthetic" or name.startswith("synthetic:"):
        return _parse_synthetic(name)
    if "://" in name or os.path.exists(name):
        return load_file(name, storage_options=storage_options)
    raise DatasetError(f"unknown dataset {name!r}: use one of {', '.join(BUILTINS)} "
                       f"or a path/URI to {', '.join(FILE_KINDS)}")
