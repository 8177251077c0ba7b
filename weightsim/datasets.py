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

import contextlib
import functools
import gzip
import hashlib
import importlib.metadata
import io
import math
import os
import pickle
import re
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from . import files
from .codedigest import code_digest
from .errors import DatasetError
from .store import check_name, s3_options_from_env
from .uris import redact, resolve

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


# --- built-ins ---------------------------------------------------------------

def cache_dir() -> str:
    """Where built-in datasets are kept once made: ``$WEIGHTSIM_CACHE``, else
    ``$XDG_CACHE_HOME/weightsim`` (default ``~/.cache/weightsim``)."""
    return os.environ.get("WEIGHTSIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "weightsim")


def _cached_builtin(name: str, package: str, make) -> Dataset:
    """The built-in ``name`` from the cache, else ``make()`` (which imports the
    generating ``package``) written to it. The file is bound to its key (the
    name, the package's version and this module's code), stored inside it
    and checked on read: a file made by other code, or damaged, is made
    again. A cache that cannot be written only costs the next load."""
    key = f"{name} {package}=={importlib.metadata.version(package)} code {code_digest(sys.modules[__name__])}"
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
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # generated locally, never downloaded
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


# --- file formats ------------------------------------------------------------

LIMIT_ENV = "WEIGHTSIM_MAX_DATASET_BYTES"
DEFAULT_LIMIT = 8 << 30
_CHUNK = 16 << 20


def byte_limit() -> int:
    """Most bytes a dataset may declare or hold (``$WEIGHTSIM_MAX_DATASET_BYTES``,
    default 8 GiB): checked against headers before anything is allocated."""
    raw = os.environ.get(LIMIT_ENV)
    if raw is None:
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise DatasetError(f"{LIMIT_ENV}={raw!r} is not a positive number of bytes")
    return value


def _check_size(nbytes: int, where: str, what: str = "declares") -> None:
    if nbytes > byte_limit():
        raise DatasetError(f"{where}: {what} {nbytes:,} bytes, over the limit of {byte_limit():,} "
                           f"(raise it with {LIMIT_ENV})")


def _options(uri: str, storage_options: dict | None) -> dict:
    """fsspec options of a dataset URI: for S3 and HTTP, ``URL_TIMEOUT``
    seconds to connect and for each next read."""
    if storage_options is not None:
        return storage_options
    if uri.startswith("s3://"):  # a fresh client: the environment's credentials now
        return {**s3_options_from_env(), "skip_instance_cache": True,
                "config_kwargs": {"connect_timeout": files.URL_TIMEOUT, "read_timeout": files.URL_TIMEOUT}}
    if uri.startswith(("http://", "https://")):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(sock_connect=files.URL_TIMEOUT,
                                                                   sock_read=files.URL_TIMEOUT)}}
    return {}


@contextlib.contextmanager
def _io_errors(uri: str):
    """Turn what a filesystem raises into one ``DatasetError`` naming ``uri``."""
    where = redact(uri)
    try:
        yield
    except FileNotFoundError:
        remote = " or not accessible" if "://" in uri else ""
        raise DatasetError(f"dataset file not found{remote}: {where}") from None
    except TimeoutError:
        raise DatasetError(f"cannot read dataset {where}: no answer within {files.URL_TIMEOUT:g} s") from None
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {where}: {exc.strerror or exc}") from None
    except Exception as exc:  # botocore / aiohttp: no credentials, unreachable endpoint
        if type(exc).__module__.split(".")[0] in {"botocore", "aiobotocore", "aiohttp"}:
            status = getattr(exc, "status", None)
            raise DatasetError(f"cannot reach dataset {where}: {type(exc).__name__}"
                               + (f" (HTTP {status})" if status else "")) from None
        raise


@contextlib.contextmanager
def _open(uri: str, storage_options: dict | None):
    """(binary file object, size) of a regular file (never a FIFO or device:
    those could block forever), refused when over the byte limit."""
    import fsspec

    with _io_errors(uri):
        fs, path = fsspec.core.url_to_fs(resolve(uri), **_options(uri, storage_options))
        info = fs.info(path)
        if info.get("type") != "file":
            kind = "a folder" if info.get("type") == "directory" else "not a regular file"
            raise DatasetError(f"{redact(uri)}: {kind}")
        size = int(info.get("size") or 0)
        _check_size(size, redact(uri), "holds")
        with fs.open(path, "rb") as f:
            if "http" in fs.protocol:  # many HTTP servers refuse ranged reads: read the (bounded) file once
                f = io.BytesIO(f.read(size + 1))
            yield f, size


def _read_all(uri: str, storage_options: dict | None = None) -> bytes:
    with _open(uri, storage_options) as (f, size), _io_errors(uri):
        return f.read(size + 1)


def _list(uri: str, storage_options: dict | None = None) -> list[str]:
    import fsspec

    with _io_errors(uri):
        fs, path = fsspec.core.url_to_fs(resolve(uri), **_options(uri, storage_options))
        try:
            return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
        except NotADirectoryError:
            raise DatasetError(f"dataset not found: {redact(uri)}") from None


def stem(uri: str) -> str:
    """The name a dataset file gets (``.../three.npz`` → ``three``): its file
    name without credentials, query or extension, in safe characters."""
    base = os.path.basename(redact(uri).split("?", 1)[0].rstrip("/"))
    for ext in (".npz", ".parquet"):
        base = base[: -len(ext)] if base.endswith(ext) else base
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", base).lstrip("._")[:64] or "dataset"


NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def load_npz(uri: str, name: str | None = None, storage_options: dict | None = None) -> Dataset:
    """``.npz`` with ``x_train, y_train, x_test, y_test`` (never with pickled
    objects). Each array's header is checked against the bytes it is stored
    in and the byte limit before the array is read."""
    where = redact(uri)
    with _open(uri, storage_options) as (f, _), _io_errors(uri):
        try:
            z = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, EOFError):
            raise DatasetError(f"{where}: not an .npz file (not a zip archive)") from None
        with z:
            members = {m.filename.removesuffix(".npy"): m for m in z.infolist()}
            missing = [k for k in NPZ_ARRAYS if k not in members]
            if missing:
                raise DatasetError(f"{where}: missing arrays {missing} (need {', '.join(NPZ_ARRAYS)})")
            headers = {k: _npy_header(z, members[k], f"{where}:{k}") for k in NPZ_ARRAYS}
            _check_size(sum(h[2] for h in headers.values()), where)
            arrays = [_npy_read(z, members[k], headers[k], f"{where}:{k}") for k in NPZ_ARRAYS]
    return _make(name or stem(uri), *arrays, source=where)


def _npy_header(z: zipfile.ZipFile, member: zipfile.ZipInfo, where: str) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, data bytes) of one ``.npy`` member, validated."""
    try:
        with z.open(member) as fp:
            version = np.lib.format.read_magic(fp)
            shape, _, dtype = _NPY_HEADERS[version](fp, max_header_size=1 << 16)
            header_len = fp.tell()
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{where}: not a readable .npy array ({str(exc)[:200]})") from None
    if dtype.hasobject:
        raise DatasetError(f"{where}: holds Python objects (pickled data is never loaded)")
    if dtype.kind not in "biuf":
        kind = "complex numbers" if dtype.kind == "c" else f"dtype {dtype}"
        raise DatasetError(f"{where}: holds {kind}; inputs and labels must be real numbers")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != member.file_size - header_len:
        raise DatasetError(f"{where}: header declares shape {shape} ({nbytes:,} bytes) but the file holds "
                           f"{member.file_size - header_len:,}")
    return shape, dtype, nbytes


def _npy_read(z: zipfile.ZipFile, member: zipfile.ZipInfo, header: tuple, where: str) -> np.ndarray:
    shape, dtype, nbytes = header
    try:
        with z.open(member) as fp:
            _NPY_HEADERS[np.lib.format.read_magic(fp)](fp, max_header_size=1 << 16)
            data = _read_exact(fp, nbytes, where)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{where}: not a readable .npy array ({str(exc)[:200]})") from None
    return np.frombuffer(data, dtype).reshape(shape)


def _read_exact(fp, nbytes: int, where: str) -> bytearray:
    """Exactly ``nbytes`` from ``fp`` and nothing after them, read in chunks
    (memory follows the data actually present, not what a header claims)."""
    buf = bytearray()
    while len(buf) < nbytes:
        chunk = fp.read(min(_CHUNK, nbytes - len(buf)))
        if not chunk:
            raise DatasetError(f"{where}: holds {len(buf):,} data bytes, header says {nbytes:,}")
        buf += chunk
    if fp.read(1):
        raise DatasetError(f"{where}: holds more data than its header says ({nbytes:,} bytes)")
    return buf


def load_parquet(uri: str, name: str | None = None, storage_options: dict | None = None) -> Dataset:
    """Parquet with ``split`` (train/test), ``label`` and a list column ``x``
    (shape from the file metadata key ``shape``, e.g. ``"1,28,28"``) or
    numeric feature columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = redact(uri)
    # the (bounded) file in memory, read on this thread: Arrow then never calls back into a Python file and
    # starts no thread of its own, either of which can abort the interpreter at exit (apache/arrow#34314;
    # 7 of 40 loaded interpreters did with Arrow's threads on, 0 of 40 without)
    data = _read_all(uri, storage_options)
    try:
        _check_size(parquet_decoded_bytes(pq.ParquetFile(pa.BufferReader(data)).metadata), where, "decodes to")
        table = pq.read_table(pa.BufferReader(data), use_threads=False, pre_buffer=False)
    except pa.ArrowException as exc:
        raise DatasetError(f"{where}: not a readable Parquet file ({str(exc)[:200]})") from None
    del data
    cols = set(table.column_names)
    if not {"split", "label"} <= cols:
        raise DatasetError(f"{where}: Parquet dataset needs columns 'split' and 'label'")
    split = _parquet_numbers(table, "split", where, text=True)
    unknown = sorted(set(split.tolist()) - {"train", "test"})
    if unknown:
        raise DatasetError(f"{where}: column 'split' holds {unknown[:3]}; use 'train' and 'test'")
    y = _parquet_numbers(table, "label", where)
    if "x" in cols:
        x = _parquet_x(table, where)
    else:
        feats = [c for c in table.column_names if c not in ("split", "label")]
        if not feats:
            raise DatasetError(f"{where}: no inputs (a list column 'x' or numeric feature columns)")
        x = np.stack([_parquet_numbers(table, c, where) for c in feats], axis=1)
    tr, te = split == "train", split == "test"
    return _make(name or stem(uri), x[tr], y[tr], x[te], y[te], source=where)


_PHYSICAL_BYTES = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}


def parquet_decoded_bytes(meta) -> int:
    """Bytes a Parquet file's columns take once decoded, from its footer
    (``pyarrow.parquet.FileMetaData``), before any page is read: per column
    chunk, its values × their width (8 for numbers, as they become float64
    here; a byte array's 4-byte offset plus its uncompressed bytes), whatever
    the encoding makes of them on disk (a run-length-encoded column of a
    million equal values takes a few bytes there)."""
    total = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            width = _PHYSICAL_BYTES.get(col.physical_type)
            total += col.num_values * max(width, 8) if width else col.num_values * 4 + col.total_uncompressed_size
    return total


def _parquet_numbers(table, column: str, where: str, text: bool = False) -> np.ndarray:
    """One flat column without nulls: numbers (or text) as a numpy array."""
    import pyarrow as pa

    col = table.column(column).combine_chunks()
    t = col.type
    ok = (pa.types.is_string(t) or pa.types.is_large_string(t)) if text else \
        (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))
    if not ok:
        raise DatasetError(f"{where}: column {column!r} has type {t}; expected {'text' if text else 'numbers'}")
    if col.null_count:
        raise DatasetError(f"{where}: column {column!r} has {col.null_count} missing values")
    return np.asarray(col.to_numpy(zero_copy_only=False))


def _parquet_x(table, where: str) -> np.ndarray:
    """The list column ``x`` as an ``(n, *shape)`` array: every row a flat
    list of numbers of one length; ``shape`` metadata must fit it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column("x").combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
            or pa.types.is_fixed_size_list(col.type)):
        raise DatasetError(f"{where}: column 'x' has type {col.type}; expected a list of numbers per row")
    values = col.flatten()
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise DatasetError(f"{where}: column 'x' holds {values.type}, not numbers (nested lists are not inputs)")
    if col.null_count or values.null_count:
        raise DatasetError(f"{where}: column 'x' has missing values")
    n = len(col)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False) if n else np.zeros(0, np.int64)
    if n and lengths.min() != lengths.max():
        raise DatasetError(f"{where}: rows of 'x' have different lengths ({lengths.min()} to {lengths.max()})")
    width = int(lengths[0]) if n else 0
    shape: tuple[int, ...] = (width,)
    raw = (table.schema.metadata or {}).get(b"shape")
    if raw is not None:
        try:
            shape = tuple(int(s) for s in raw.decode().split(","))
        except (UnicodeDecodeError, ValueError):
            raise DatasetError(f"{where}: metadata 'shape' {raw[:40]!r} is not a list of whole numbers") from None
        if min(shape, default=0) < 1 or math.prod(shape) != width:
            raise DatasetError(f"{where}: metadata 'shape' {shape} does not fit rows of {width} values")
    return values.to_numpy(zero_copy_only=False).reshape(n, *shape)


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_MAX_DIMS = 4


def _idx_header(fp, where: str) -> tuple[np.dtype, tuple[int, ...]]:
    """(dtype, dims) of an IDX stream positioned at its start."""
    head = fp.read(4)
    if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in _IDX_DTYPES or head[3] == 0:
        raise DatasetError(f"{where}: not an IDX file (bad magic number)")
    if head[3] > _IDX_MAX_DIMS:
        raise DatasetError(f"{where}: IDX header declares {head[3]} dimensions (at most {_IDX_MAX_DIMS})")
    raw = fp.read(4 * head[3])
    if len(raw) < 4 * head[3]:
        raise DatasetError(f"{where}: IDX header is cut short")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4"))
    if min(dims) < 0:
        raise DatasetError(f"{where}: IDX header declares negative dimensions {dims}")
    return np.dtype(_IDX_DTYPES[head[2]]), dims


@contextlib.contextmanager
def _idx_stream(fp, where: str):
    """``fp``, transparently gunzipped when it starts with the gzip magic."""
    magic = fp.read(2)
    fp.seek(0)
    if magic != b"\x1f\x8b":
        yield fp
        return
    with gzip.GzipFile(fileobj=fp) as gz:
        try:
            yield gz
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{where}: corrupt gzip ({exc})") from None


def _idx_data(fp, dtype: np.dtype, dims: tuple[int, ...], where: str) -> np.ndarray:
    data = _read_exact(fp, math.prod(dims) * dtype.itemsize, where)
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(data: bytes, where: str = "IDX file") -> np.ndarray:
    """Decode an IDX array (gzipped or not), header checked first."""
    with _idx_stream(io.BytesIO(data), where) as fp:
        dtype, dims = _idx_header(fp, where)
        _check_size(math.prod(dims) * dtype.itemsize, where)
        return _idx_data(fp, dtype, dims, where)


def load_idx(uri: str, name: str | None = None, storage_options: dict | None = None) -> Dataset:
    """A folder with MNIST-style ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (``.gz`` allowed).
    All four headers are read and checked against each other (as many
    labels as images) and the byte limit before any data is read."""
    files, where = _list(uri, storage_options), redact(uri)
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for kind in ("images", "labels"):
            found = [f for f in files if f.startswith(prefix) and kind in f]
            if not found:
                raise DatasetError(f"{where}: no {prefix}*{kind}* IDX file")
            parts[split, kind] = f"{uri.rstrip('/')}/{found[0]}"
    with contextlib.ExitStack() as stack:
        streams, headers = {}, {}
        for part, file_uri in parts.items():
            f, _ = stack.enter_context(_open(file_uri, storage_options))
            label = redact(file_uri)
            streams[part] = stack.enter_context(_idx_stream(f, label))
            with _io_errors(file_uri):
                headers[part] = _idx_header(streams[part], label)
        for split in ("train", "test"):
            n_images, n_labels = headers[split, "images"][1][0], headers[split, "labels"][1][0]
            if n_images != n_labels or len(headers[split, "labels"][1]) != 1:
                raise DatasetError(f"{where}: {split} headers declare {n_images} images and labels of shape "
                                   f"{headers[split, 'labels'][1]}")
        _check_size(sum(math.prod(d) * t.itemsize for t, d in headers.values()), where)
        arrays = {}
        for part, (dtype, dims) in headers.items():
            with _io_errors(parts[part]):
                arrays[part] = _idx_data(streams[part], dtype, dims, redact(parts[part]))
    return _make(name or stem(uri), arrays["train", "images"], arrays["train", "labels"],
                 arrays["test", "images"], arrays["test", "labels"], source=where)


class _PlainUnpickler(pickle._Unpickler):
    """Rebuilds only plain containers and numpy arrays; anything else (a
    function, a class, ``os.system``) is refused before it is created. The
    bytes it creates (arrays, encoded text) are counted against a budget, so
    a small file that references one large object many times cannot
    allocate without bound. Pure-Python unpickler: the budget needs a hook
    on every object built."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # how protocol-2 pickles spell bytes; a pure str→bytes function

    def __init__(self, file, budget: int, **kwargs):
        super().__init__(file, **kwargs)
        self.budget = budget

    def _charge(self, nbytes: int) -> None:
        self.budget -= nbytes
        if self.budget < 0:
            raise pickle.UnpicklingError("it builds far more data than the file holds")

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: CIFAR batches hold plain data only")
        fn = super().find_class(module, name)
        if (module, name) != ("_codecs", "encode"):
            return fn

        def encode(*args):
            self._charge(len(args[0]) if args and isinstance(args[0], str) else 0)
            return fn(*args)
        return encode

    def load_build(self):
        inst = self.stack[-2]
        super().load_build()
        if isinstance(inst, np.ndarray):
            self._charge(inst.nbytes)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def read_cifar_batch(data: bytes, where: str = "CIFAR batch") -> dict:
    """Decode one CIFAR python batch with the restricted unpickler; keys as str."""
    try:
        obj = _PlainUnpickler(io.BytesIO(data), 4 * len(data) + (1 << 20), encoding="bytes").load()
    except Exception as exc:  # any malformed or hostile pickle
        raise DatasetError(f"{where}: not a plain CIFAR batch ({str(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: not a CIFAR batch (top level is {type(obj).__name__})")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


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
