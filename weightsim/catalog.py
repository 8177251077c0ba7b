"""The store's catalog of named sweeps.

A sweep is recorded once it is planned, as ``sweeps/<dataset>/<name>.json``:
its options (everything that defines its runs and their analysis), the
dataset it was planned on (name, source, fingerprint), the problems, the
adaptations made to fit the dataset, and its runs as weight-table keys per
arch. Run ids stay content-addressed: a sweep is a list of run keys, so two
sweeps that share runs share their tables. ``analyze`` and ``report`` of a
named sweep need nothing but its name and the store.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import WeightsimError
from .store import Store, check_name, open_store, thread_map

if TYPE_CHECKING:
    from .datasets import Dataset
    from .runs import RunKey

PREFIX = "sweeps"
# options that say where and how a sweep runs (and its name), not what it is
NOT_RECORDED = ("store", "device", "runner", "seed_chunk", "sweep", "slot_limit")


def record_key(dataset: str, sweep: str) -> str:
    return f"{PREFIX}/{check_name(dataset, 'dataset name')}/{check_name(sweep, 'sweep name')}.json"


def save(store: str | Store, name: str, options: dict, dataset: "Dataset", keys: Sequence["RunKey"],
         adaptations: Sequence[str] = (), imported: dict | None = None, dry_run: bool = False) -> str:
    """Record sweep ``name``; its URI. Recording the same sweep again keeps
    the record; a different sweep under a name in use is refused.
    ``imported``: the provenance of a sweep of imported networks;
    ``dry_run``: only refuse (or not), write nothing."""
    st = open_store(store)
    runs: dict[str, list[str]] = {}
    for k in keys:
        runs.setdefault(k.arch, []).append(k.key)
    spec = {"name": name, "options": {k: v for k, v in options.items() if k not in NOT_RECORDED},
            "dataset": dataset.describe(), "problems": list(dict.fromkeys(k.problem.name for k in keys)),
            "adaptations": list(adaptations), "runs": runs, **({"imported": imported} if imported else {})}
    key = record_key(dataset.name, name)
    old = _read(st, key)
    if old is not None:  # the same sweep (adaptations are notes on it, not part of it) keeps its record
        if all(old.get(k) == v for k, v in spec.items() if k != "adaptations"):
            return st.key_uri(key)
        raise WeightsimError(f"sweep {name} of {dataset.name} already exists in {st.uri} with other runs or "
                             f"options: choose another --sweep name")
    if dry_run:
        return st.key_uri(key)
    return st.put_bytes(key, json.dumps({**spec, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                        indent=1).encode())


def _read(st: Store, key: str) -> dict | None:
    try:
        value = json.loads(st.get_bytes(key))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        raise WeightsimError(f"{st.uri}/{key} is damaged: record the sweep again with 'weightsim train'") from None
    if not isinstance(value, dict) or not isinstance(value.get("runs"), dict):
        raise WeightsimError(f"{st.uri}/{key} is not a sweep record")
    return value


def load(store: str | Store, name: str, dataset: str | None = None) -> dict:
    """The record of sweep ``name`` (of ``dataset``: a dataset's name, or
    the path/URI it was loaded from; needed only when several datasets have
    a sweep of that name)."""
    from .datasets import dataset_name

    st = open_store(store)
    check_name(name, "sweep name")
    st.invalidate()
    names = None if dataset is None else {dataset, dataset_name(dataset)}
    keys = [k for k in st.glob(f"{PREFIX}/*/{name}.json") if names is None or k.split("/")[1] in names]
    if not keys:
        raise WeightsimError(f"no sweep named {name} in {st.uri}: 'weightsim sweeps --store {st.uri}' lists them")
    if len(keys) > 1:
        names = ", ".join(k.split("/")[1] for k in keys)
        raise WeightsimError(f"sweep {name} exists for several datasets ({names}): give --dataset")
    record = _read(st, keys[0])
    options = record.get("options") or {}
    if "problem_kind" not in options:  # recorded before problem kinds: k-class groups were drawn for k != 2
        options["problem_kind"] = "pairs" if options.get("classes_per_problem", 2) == 2 else "groups"
    return record


def table_uris(store: str | Store, record: dict) -> dict[str, list[str]]:
    """Weight-table URIs of the sweep's runs per arch (runs that diverged
    have none, ``sweep.divergence_of``); a ``WeightsimError`` naming how
    many others are missing."""
    from .sweep import divergence_of

    st = open_store(store)
    absent = {k for keys in record["runs"].values() for k in keys if not st.exists(k)}
    missing = sorted(k for k in absent if divergence_of(st, k) is None)
    if missing:
        total = sum(map(len, record["runs"].values()))
        raise WeightsimError(f"{len(missing)} of {total} runs of sweep {record['name']} are not in {st.uri} "
                             f"(e.g. {missing[0]}): run 'weightsim train --sweep {record['name']}' first")
    return {arch: [st.key_uri(k) for k in keys if k not in absent] for arch, keys in record["runs"].items()}


def listing(store: str | Store) -> list[dict]:
    """Every recorded sweep, latest first: ``name``, ``dataset``, ``created``,
    ``archs``, ``trained`` (tables present), ``total`` and ``analysed``."""
    from .tables import WEIGHTS_GLOB

    st = open_store(store)
    st.invalidate()
    records = [r for r in thread_map(lambda k: _read(st, k), st.glob(f"{PREFIX}/*/*.json"), st.read_workers(16))
               if r is not None]
    present = set(st.glob(WEIGHTS_GLOB))
    out = []
    for r in records:
        keys = [k for ks in r["runs"].values() for k in ks]
        ds = r.get("dataset", {}).get("name", "?")
        out.append({"name": r["name"], "dataset": ds, "created": r.get("created", ""), "archs": list(r["runs"]),
                    "trained": sum(k in present for k in keys), "total": len(keys),
                    "analysed": st.exists(f"reports/{ds}/{r['name']}/summary.json")})
    return sorted(out, key=lambda e: e["created"], reverse=True)
