"""Parquet datasets: columns ``split``, ``label`` and a list column ``x`` or
numeric feature columns; the decoded size is checked from the footer."""
from __future__ import annotations

import math

import numpy as np

from ..errors import DatasetError
from ..uris import redact
from .base import Dataset, _make
from .source import _check_size, _read_all, stem


def load_parquet(uri: str, name: str | None = None, storage_options: dict | None = None) -> Dataset:
    """Parquet with ``split`` (train/test), ``label`` and a list column ``x``
    (shape from the file metadata key ``shape``, e.g. ``"1,28,28"``) or
    numeric feature columns."""
    import pyarrow as pa

    from ..parquet import open_parquet, read_whole

    where = redact(uri)
    data = _read_all(uri, storage_options)  # bounded; read into memory, so Arrow never calls back into Python
    try:
        pf = open_parquet(pa.BufferReader(data))
        _check_size(parquet_decoded_bytes(pf.metadata), where, "decodes to")
        table = read_whole(pf)
    except pa.ArrowException as exc:
        raise DatasetError(f"{where}: not a readable Parquet file ({str(exc)[:200]})") from None
    del data, pf  # the encoded bytes (the table keeps what it needs)
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
