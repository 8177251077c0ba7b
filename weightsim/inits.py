"""Shared initializations (docs/method.md §6): runs that start from identical
epoch-0 tensors.

Native training draws every run's initialization from its problem and seed
(``training.run_seed``), so runs of different problems never share one.
Imported zoos often reuse one initialization seed across problems: a
held-out run then resembles its twin of another problem, which pushes
controls below chance. ``labels`` finds such runs from a digest of each
run's epoch-0 rows (row-group pruning on the ``epoch`` column: the rest of
the table is not read); ``htt`` keeps every shared initialization on one
side of its split, and ``describe`` says so in the summary.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import StoreError, TableError
from .parquet import open_parquet, read_holding
from .store import Store, thread_map
from .tables import table_or_outage

COLUMNS = ["epoch", "name", "dtype", "shape", "values", "raw"]


def digest(st: Store, uri: str, epoch: int = 0) -> str:
    """sha256 of a run's tensors at ``epoch`` (names, dtypes, shapes and
    values, in name order), read from that epoch's row groups only."""
    try:
        with st.open_read(st.key_of(uri)) as f:
            t = read_holding(open_parquet(f), {"epoch": epoch}, COLUMNS)
        t = t.filter(pc.equal(t["epoch"], epoch)).sort_by("name")
    except FileNotFoundError:
        raise TableError(uri, "no such file") from None
    except StoreError as exc:
        raise table_or_outage(uri, exc) from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TableError(uri, f"unreadable epoch {epoch} ({type(exc).__name__}: {str(exc)[:200]})") from None
    if t.num_rows == 0:
        raise TableError(uri, f"no checkpoint for epoch {epoch}")
    h = hashlib.sha256(json.dumps([t[c].to_pylist() for c in ("name", "dtype", "shape")]).encode())
    values = t["values"].combine_chunks()
    h.update(values.values.to_numpy(zero_copy_only=False).tobytes() if len(values) else b"")
    for raw in t["raw"].to_pylist():
        h.update(b"\0" if raw is None else len(raw).to_bytes(8, "little") + raw)
    return h.hexdigest()


def labels(st: Store, uris: Sequence[str]) -> np.ndarray:
    """(N,) initialization labels of the runs (every one must hold epoch 0):
    equal labels ⇔ identical epoch-0 tensors."""
    return np.unique(thread_map(lambda u: digest(st, u), uris, st.read_workers(16)), return_inverse=True)[1]


def describe(inits: np.ndarray | None, problems: np.ndarray) -> dict:
    """The summary's ``shared_inits`` of runs with initialization labels
    ``inits`` (None: not checked, no epoch 0) and ``problems`` (N,):
    ``checked``, ``groups`` (initializations used by more than one run),
    ``runs`` (in them), ``across_problems`` (groups spanning problems),
    ``problems`` (those whose runs share one across problems), ``grouped``
    (whether the HTT split was grouped) and ``note`` (one line, when
    anything is shared or nothing could be checked)."""
    if inits is None:
        return {"checked": False, "grouped": False,
                "note": "whether runs share initializations could not be checked: the runs have no epoch-0 "
                        "checkpoint (imported without init), so the HTT split is not grouped by initialization"}
    _, group, counts = np.unique(inits, return_inverse=True, return_counts=True)
    shared = counts[group] > 1
    pairs = np.unique(np.stack([group, np.unique(problems, return_inverse=True)[1]]), axis=1)
    spans = np.bincount(pairs[0], minlength=len(counts)) > 1  # initializations used by several problems
    sharing = sorted({str(p) for p in problems[spans[group]]})
    out = {"checked": True, "groups": int((counts > 1).sum()), "runs": int(shared.sum()),
           "across_problems": int(spans.sum()), "problems": sharing, "grouped": bool(shared.any())}
    if shared.any():
        out["note"] = (f"design confound: {out['runs']} runs share {out['groups']} initializations (identical "
                       f"epoch-0 tensors), {out['across_problems']} of them across problems"
                       + (f" ({', '.join(sharing)})" if sharing else "")
                       + "; the HTT split was grouped (every run of a shared initialization on the same side) and "
                         "its permutation null shuffles labels within the groups; the similarity and retrieval "
                         "tests are not grouped, and the sample-efficiency curve is left out")
    return out
