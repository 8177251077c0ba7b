"""MNIST-style IDX datasets: a folder of four IDX files (gzipped or not),
every header checked before any data is read."""
from __future__ import annotations

import contextlib
import gzip
import io
import math
import zlib

import numpy as np

from ..errors import DatasetError
from ..uris import redact
from .base import Dataset, _make
from .source import _check_size, _io_errors, _list, _open, _read_exact, stem

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
