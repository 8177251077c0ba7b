"""``.npz`` datasets: each array's header checked before it is read; never
pickled objects."""
from __future__ import annotations

import math
import zipfile

import numpy as np

from ..errors import DatasetError
from ..uris import redact
from .base import Dataset, _make
from .source import _check_size, _io_errors, _open, _read_exact, stem

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
