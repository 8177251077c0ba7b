"""The feature cache: one Parquet file per run (and per extra checkpoint
epoch) beside the weight tables,
``features/dataset=<d>/arch=<a>/problem=<p>/<run_id>-<key>.parquet``, one row
per representation name, its float32 values as bytes. A file is bound to
what it was computed from: its metadata holds the code version, the run, the
table's content checksum, its own store key, the settings and a checksum of
its values, and ``decode`` returns nothing unless all of them match what is
asked (``representations`` decides what is cached and when)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .digest import json_digest
from .errors import WeightsimError
from .parquet import decode_parquet
from .store import Store

META_KEY = b"weightsim-features"
SCHEMA = pa.schema([("name", pa.string()), ("values", pa.binary())])


def cache_key(code: str, meta: dict, settings: dict, reference: dict) -> str:
    """The key of one run's cache file: a digest of the code version, the
    run, its table's content, the settings and the reference run."""
    return json_digest({"code": code, "run_id": meta["run_id"], "table": meta["checksum"],
                        "settings": settings, "reference": [reference["run_id"], reference["checksum"]]}, 24)


def store_key(st: Store, uri: str, meta: dict, key: str) -> str:
    folder = st.key_of(uri).rsplit("/", 1)[0]
    if not folder.startswith("weights/"):
        raise WeightsimError(f"{uri} is not a weight table of store {st.uri}")
    return f"features/{folder.removeprefix('weights/')}/{meta['run_id']}-{key}.parquet"


def _values_checksum(names: Sequence[str], blobs: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for n, b in zip(names, blobs):
        h.update(n.encode() + b"\0" + len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def encode(code: str, reps: dict[str, np.ndarray], depths: list[int], meta: dict, key: str, settings: dict) -> bytes:
    """A cache file for one run; ``key``: its store key (bound into it)."""
    names = list(reps)
    blobs = [np.ascontiguousarray(reps[n], dtype="<f4").tobytes() for n in names]
    info = {"code": code, "run_id": meta["run_id"], "table_checksum": meta["checksum"], "key": key,
            "settings": settings, "depths": depths, "checksum": _values_checksum(names, blobs)}
    table = pa.table([pa.array(names, pa.string()), pa.array(blobs, pa.binary())], schema=SCHEMA)
    table = table.replace_schema_metadata({META_KEY: json.dumps(info)})
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="none", use_dictionary=False, write_statistics=False)
    return buf.getvalue().to_pybytes()


def decode(code: str, data: bytes, meta: dict, key: str, expected: Sequence[str]
           ) -> tuple[dict[str, np.ndarray], list[int]] | None:
    """The cached representations (named ``expected``), or None unless the
    file is intact and was written for this run, table content and key."""
    try:
        table = decode_parquet(data)
        info = json.loads(table.schema.metadata[META_KEY])
        names = table.column("name").to_pylist()
        blobs = table.column("values").to_pylist()
        ok = (info["run_id"], info["table_checksum"], info["key"], info["code"]) == \
            (meta["run_id"], meta["checksum"], key, code)
        if not ok or info["checksum"] != _values_checksum(names, blobs) or not set(expected) <= set(names):
            return None
        return {n: np.frombuffer(b, "<f4") for n, b in zip(names, blobs)}, [int(d) for d in info["depths"]]
    except (pa.ArrowException, OSError, KeyError, ValueError, TypeError):
        return None


def read_cached(code: str, st: Store, key: str, meta: dict, expected: Sequence[str]
                ) -> tuple[dict[str, np.ndarray], list[int]] | None:
    """``decode`` of the file at ``key`` (None if there is none)."""
    try:
        return decode(code, st.get_bytes(key), meta, key, expected)
    except FileNotFoundError:
        return None
