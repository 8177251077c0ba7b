"""Parquet helpers shared by weight tables and packs: row groups cut by
key and size, writing with chosen statistics, pruning row groups by them, and
reading Python file objects safely."""
from __future__ import annotations

import os
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq


def row_groups(keys: Sequence, sizes: Sequence[int], cap: int) -> list[tuple[int, int]]:
    """Row ranges [lo, hi) of the row groups of rows with group ``keys`` and
    value counts ``sizes``: a group ends where the key changes or where it
    would pass ``cap`` values (a single larger row gets a group of its own)."""
    bounds, lo, total = [], 0, 0
    for i, (key, size) in enumerate(zip(keys, sizes)):
        if i > lo and (key != keys[lo] or total + size > cap):
            bounds.append((lo, i))
            lo, total = i, 0
        total += size
    return [*bounds, (lo, len(keys))] if len(keys) else []


def parquet_bytes(table: pa.Table, groups: list[tuple[int, int]], statistics: list[str]) -> bytes:
    """Parquet bytes of ``table`` with row groups ``groups`` (row ranges, as
    from ``row_groups``), uncompressed, without dictionaries, with statistics
    on the columns ``statistics`` only."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, compression="none", use_dictionary=False,
                          write_statistics=statistics) as writer:
        size = groups[0][1] if groups else 1
        if all(lo == i * size and hi - lo <= size for i, (lo, hi) in enumerate(groups)):
            writer.write_table(table, row_group_size=size)  # equal groups: one call
        else:
            for lo, hi in groups:
                writer.write_table(table.slice(lo, hi - lo), row_group_size=hi - lo)
    return sink.getvalue().to_pybytes()


def groups_holding(pf: pq.ParquetFile, values: dict) -> list[int]:
    """Row groups of ``pf`` whose min/max statistics do not exclude
    ``values`` (column → value)."""
    md = pf.metadata
    where = {c: pf.schema_arrow.get_field_index(c) for c in values}
    def admits(stats, value) -> bool:
        return stats is None or not stats.has_min_max or stats.min <= value <= stats.max

    return [g for g in range(md.num_row_groups)
            if all(admits(md.row_group(g).column(where[c]).statistics, v) for c, v in values.items())]


def threads_ok(source) -> bool:
    """Whether Arrow may read ``source`` with its thread pools: a path or an
    Arrow file, yes; a Python file object, no. Arrow threads that call back
    into a Python file can still be alive when the interpreter exits, which
    aborts the process ("terminate called without an active exception",
    exit 134; apache/arrow#34314): those are read with ``pre_buffer`` and
    ``use_threads`` off."""
    return isinstance(source, (str, os.PathLike, pa.NativeFile))
