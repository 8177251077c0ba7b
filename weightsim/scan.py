"""One tensor of many runs: from the packs that hold them, the others from
their weight tables by column projection and row-group pruning. Every row
read is verified; a pack whose copy of a run no longer matches the run's
table is not used for that run."""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa

from .errors import TableError
from .packs import pack_index, run_id_of, scan_pack
from .parquet import open_parquet, read_holding
from .store import Store, open_store, thread_map
from .tables import FORMAT, META_KEY, ROW_KEYS, decode_rows, read_meta

log = logging.getLogger(__name__)


def _scan_file(st: Store, uri: str, name: str, epoch: int | None) -> tuple[str, np.ndarray]:
    """(run_id, values) of tensor ``name`` in one table, reading only the row
    groups whose statistics can hold it."""
    try:
        with st.open_read(st.key_of(uri)) as f:
            pf = open_parquet(f)
            meta = json.loads((pf.schema_arrow.metadata or {})[META_KEY])
            if meta.get("format") not in (1, FORMAT):
                raise ValueError(f"unsupported format {meta.get('format')!r}")
            want = int(meta["config"]["epochs"]) if epoch is None else int(epoch)
            table = read_holding(pf, {"epoch": want, "name": name}, [*ROW_KEYS, "values", "raw", "checksum"])
    except (pa.ArrowException, OSError, KeyError, ValueError, TypeError) as exc:
        raise TableError(uri, f"unreadable while scanning {name} ({type(exc).__name__}: {str(exc)[:200]})") from None
    rows = [t for e, n, t in decode_rows(table, uri, meta.get("format")) if e == want and n == name]
    if len(rows) != 1:
        raise TableError(uri, f"has no tensor {name} at epoch {want}")
    return meta["run_id"], rows[0].numpy()


def scan_layer(store: str | Store, name: str, uris: list[str], epoch: int | None = None,
               workers: int | None = None) -> dict[str, np.ndarray]:
    """One tensor (state-dict key ``name``) of many runs: run_id → float32
    array. ``epoch=None`` picks each run's final checkpoint. Runs held by a
    pack (``weightsim.packs``) whose copy is the table's current content (the
    pack recorded the table's checksum; the table's footer says its checksum
    now) are read from the pack, one ranged read per pack; the others from
    their tables, by column projection and row-group pruning (``workers``
    threads, default ``Store.read_workers()``), with a warning naming the
    stale pack. Every row read is verified against its checksum; a bad table
    or pack raises its ``TableError``."""
    st = open_store(store)
    workers = workers or st.read_workers()
    index = pack_index(st)
    packed = [u for u in uris if run_id_of(u) in index]
    current = dict(zip(packed, thread_map(lambda u: read_meta(u, st)["checksum"], packed, workers)))
    by_pack: dict[str, set[str]] = {}
    rest, stale = [], {}
    for uri in uris:
        run_id = run_id_of(uri)
        if run_id in index and index[run_id][1] == current[uri]:
            by_pack.setdefault(index[run_id][0], set()).add(run_id)
        else:
            rest.append(uri)
            if run_id in index:
                stale.setdefault(index[run_id][0], []).append(run_id)
    for key, run_ids in stale.items():
        log.warning("pack %s is stale for %d run(s) (e.g. %s: its table changed since the pack was written); "
                    "reading them from their tables", st.key_uri(key), len(run_ids), run_ids[0])
    out = {}
    for key, run_ids in by_pack.items():
        out.update(scan_pack(st, key, name, run_ids, epoch))
    out.update(thread_map(lambda u: _scan_file(st, u, name, epoch), rest, workers))
    return out
