"""Detect new or changed dataset files under ``<store>/datasets/``.

Each entry (a file such as ``x.npz`` / ``x.parquet``, or a folder of IDX or
CIFAR files) gets a cheap signature from the store's listing (names, sizes,
ETags or modification times). The last signatures seen are kept in
``state/datasets.json`` in the store, so every change is reported once.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from .digest import json_digest
from .errors import StoreError
from .store import Store, open_store

log = logging.getLogger(__name__)

STATE_KEY = "state/datasets.json"


@dataclass(frozen=True)
class DatasetChange:
    name: str
    uri: str
    signature: str
    new: bool


def _signature(store: Store, path: str) -> str:
    info = store._call(store.fs.find, path, withdirs=False, detail=True) if store.fs.isdir(path) else \
        {path: store._call(store.fs.info, path)}
    parts = sorted((p[len(path):], i.get("size"), str(i.get("ETag") or i.get("etag") or i.get("mtime") or
                                                       i.get("LastModified"))) for p, i in info.items())
    return json_digest(parts, 16)  # a list of (str, int, str): sorting keys changes nothing in its JSON


def scan(store: str | Store) -> list[DatasetChange]:
    """Dataset entries that are new or changed since the last ``commit``."""
    st = open_store(store)
    st.invalidate()
    seen = _seen(st)
    changes = []
    for key in st.glob("datasets/*"):
        name = key.split("/", 1)[1]
        try:
            uri = st.key_uri(key)
        except StoreError as exc:  # a name the store cannot address: skip it, announce the others
            log.warning("not announcing datasets/%s: %s", name, exc)
            continue
        sig = _signature(st, st.path(key))
        if seen.get(name) != sig:
            changes.append(DatasetChange(name, uri, sig, name not in seen))
    return changes


def _seen(st: Store) -> dict[str, str]:
    """The signatures last committed; a damaged state file counts as empty
    (every dataset is announced again: a rerun trains nothing twice)."""
    seen = st.get_json(STATE_KEY, missing={})
    if not isinstance(seen, dict) or not all(isinstance(v, str) for v in seen.values()):
        log.warning("%s/%s is damaged; announcing every dataset again", st.uri, STATE_KEY)
        return {}
    return seen


def commit(store: str | Store, changes: list[DatasetChange]) -> None:
    """Remember ``changes`` as seen."""
    st = open_store(store)
    seen = _seen(st)
    seen.update({c.name: c.signature for c in changes})
    st.put_bytes(STATE_KEY, json.dumps(seen, indent=1, sort_keys=True).encode())
