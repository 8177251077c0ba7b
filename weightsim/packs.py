"""Packs: the weight-table rows of many runs in one Parquet file, sorted by
tensor, so that one layer of thousands of runs is one ranged read instead of
thousands of file opens (or thousands of GETs on object storage).

A pack is a derived copy; the weight tables stay the source of truth (one
file per run, never modified). ``write_pack`` copies the rows of tables it has
verified, with their row checksums, so rows read from a pack are verified
like rows read from a table, and records each table's content checksum: a
table rewritten since (retrained after corruption, say) no longer matches,
and ``scan.scan_layer`` reads that run from its table.

Layout: ``packs/dataset=<d>/arch=<a>/<hash of the run ids>.parquet``. Columns:
those of a weight table plus ``format`` (of the row's checksum) and
``final_epoch``; one row group per (tensor name, epoch), at most
``GROUP_VALUES`` values, with statistics on ``name`` and ``epoch``. The file
metadata key ``weightsim-pack`` lists the runs and a checksum over the rows.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .errors import SpecError, StoreError, TableError
from .store import Store, open_store
from .parquet import open_parquet, parquet_bytes, read_holding, row_groups
from .tables import ROW_KEYS, decode_rows, read_table

META_KEY = b"weightsim-pack"
GROUP_VALUES = 1 << 22  # 16 MiB of float32 per row group
PACKS_GLOB = "packs/**/*.parquet"
_READ = [*ROW_KEYS, "values", "raw", "checksum", "format", "final_epoch"]


def run_id_of(uri: str) -> str:
    """The run id a weight table's URI names (``…/<run_id>.parquet``)."""
    return uri.rsplit("/", 1)[-1].removesuffix(".parquet")


def _partition(key: str, name: str) -> str:
    found = [p.split("=", 1)[1] for p in key.split("/") if p.startswith(f"{name}=")]
    if not found:
        raise SpecError(f"{key} is not a weight table key (no {name}= folder)")
    return found[0]


def write_pack(store: str | Store, uris: Sequence[str]) -> str:
    """Copy the verified rows of the weight tables ``uris`` (one dataset and
    arch) into one pack; return its URI. A bad table raises its ``TableError``."""
    st = open_store(store)
    if not uris:
        raise SpecError("write_pack needs at least one weight table")
    keys = [st.key_of(u) for u in uris]
    where = {(_partition(k, "dataset"), _partition(k, "arch")) for k in keys}
    if len(where) != 1:
        raise SpecError(f"a pack holds one dataset and arch, got {sorted(where)}")
    (dataset, arch), = where
    parts, runs = [], {}
    for uri, key in zip(uris, keys):
        try:
            data = st.get_bytes(key)
        except FileNotFoundError:
            raise TableError(uri, "no such file") from None
        table, meta = read_table(data, uri)
        n = table.num_rows
        parts.append(table.replace_schema_metadata(None)
                     .append_column("format", pa.array(np.full(n, meta["format"], np.int8)))
                     .append_column("final_epoch", pa.array(np.full(n, int(meta["config"]["epochs"]), np.int32))))
        runs[meta["run_id"]] = {"key": key, "checksum": meta["checksum"]}
    rows = pa.concat_tables(parts).sort_by([("name", "ascending"), ("epoch", "ascending"), ("run_id", "ascending")])
    meta = {"format": 1, "dataset": dataset, "arch": arch, "runs": runs, "library_version": __version__}
    checksums = rows.column("checksum").to_pylist()
    meta["checksum"] = hashlib.sha256(("".join(checksums) + json.dumps(meta, sort_keys=True)).encode()).hexdigest()
    rows = rows.replace_schema_metadata({META_KEY: json.dumps(meta)})
    sizes = pc.list_value_length(rows.column("values")).fill_null(0).to_numpy()
    keys = list(zip(rows.column("name").to_pylist(), rows.column("epoch").to_pylist()))
    data = parquet_bytes(rows, row_groups(keys, sizes.tolist(), GROUP_VALUES), ["epoch", "name"])
    pack_id = hashlib.sha256("\n".join(sorted(runs)).encode()).hexdigest()[:20]
    return st.put_bytes(f"packs/dataset={dataset}/arch={arch}/{pack_id}.parquet", data)


def pack_index(store: str | Store) -> dict[str, tuple[str, str]]:
    """run id → (key of a pack holding it, the checksum its table had when
    the pack was written), over every pack in the store (read from the
    packs' footers only)."""
    st = open_store(store)
    index = {}
    for key in st.glob(PACKS_GLOB):
        try:
            with st.open_read(key) as f:
                meta = json.loads(pq.read_schema(f).metadata[META_KEY])
            index.update({run_id: (key, run["checksum"]) for run_id, run in meta["runs"].items()})
        except (pa.ArrowException, OSError, KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"unreadable pack {st.key_uri(key)} ({type(exc).__name__}: {str(exc)[:200]}); "
                             "delete it or write it again") from None
    return index


def scan_pack(store: str | Store, key: str, name: str, run_ids: set[str],
              epoch: int | None = None) -> dict[str, np.ndarray]:
    """Tensor ``name`` of the runs ``run_ids`` held by the pack ``key``:
    run id → float32 array (``epoch=None``: each run's final epoch). Reads
    only the row groups that can hold the tensor; verifies the rows read."""
    st = open_store(store)
    uri = st.key_uri(key)
    try:
        with st.open_read(key) as f:
            want = {"name": name} if epoch is None else {"name": name, "epoch": int(epoch)}
            table = read_holding(open_parquet(f), want, _READ)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TableError(uri, f"unreadable pack ({type(exc).__name__}: {str(exc)[:200]})") from None
    at = table.column("final_epoch") if epoch is None else pa.scalar(int(epoch), pa.int32())
    mask = pc.and_(pc.and_(pc.equal(table.column("name"), name), pc.equal(table.column("epoch"), at)),
                   pc.is_in(table.column("run_id"), pa.array(sorted(run_ids), pa.string())))
    table = table.filter(mask)
    out = {}
    for fmt in pc.unique(table.column("format")).to_pylist():
        part = table.filter(pc.equal(table.column("format"), fmt))
        for run_id, (_, _, t) in zip(part.column("run_id").to_pylist(), decode_rows(part, uri, fmt)):
            out[run_id] = t.numpy()
    missing = run_ids - out.keys()
    if missing:
        raise TableError(uri, f"has no tensor {name} for {len(missing)} of its runs (e.g. {sorted(missing)[0]})")
    return out
