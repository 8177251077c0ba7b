"""Parquet helpers shared by weight tables, packs, datasets and caches: row
groups cut by key and size, writing with chosen statistics, pruning row groups
by them, and reading without Arrow threads where threads could outlive the
interpreter."""
from __future__ import annotations

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


# Every read below runs on the calling thread and starts no Arrow thread: a pool
# thread alive when the interpreter exits can abort the process (exit 134,
# apache/arrow#34314), and on a Python file object (S3) its threads call back
# into Python. The tables read are small: threads were slower here, not faster.

def decode_parquet(data: bytes) -> pa.Table:
    """The table held in Parquet ``data`` (``pq.read_table`` would start
    Arrow's pools even with ``use_threads`` off). Raises
    ``pa.ArrowException`` on bytes that are not Parquet."""
    return read_whole(open_parquet(pa.BufferReader(data)))


def open_parquet(source) -> pq.ParquetFile:
    """A Parquet reader of ``source`` (a path, an Arrow file or a Python
    file object) that reads nothing ahead."""
    return pq.ParquetFile(source, pre_buffer=False)


def read_whole(pf: pq.ParquetFile) -> pa.Table:
    """Every row and column of ``pf``."""
    return pf.read(use_threads=False)


def read_holding(pf: pq.ParquetFile, values: dict, columns: Sequence[str]) -> pa.Table:
    """``columns`` of the row groups of ``pf`` whose statistics do not
    exclude ``values`` (column → value); rows of other values may be among
    them, so filter after."""
    return pf.read_row_groups(groups_holding(pf, values), columns=list(columns), use_threads=False)


def groups_holding(pf: pq.ParquetFile, values: dict) -> list[int]:
    """Row groups of ``pf`` whose min/max statistics do not exclude
    ``values`` (column → value)."""
    md = pf.metadata
    where = {c: pf.schema_arrow.get_field_index(c) for c in values}
    def admits(stats, value) -> bool:
        return stats is None or not stats.has_min_max or stats.min <= value <= stats.max

    return [g for g in range(md.num_row_groups)
            if all(admits(md.row_group(g).column(where[c]).statistics, v) for c, v in values.items())]
