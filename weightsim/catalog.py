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
from dataclasses import replace
from typing import TYPE_CHECKING

from .config import Options
from .digest import json_digest
from .errors import SweepNotFound, WeightsimError
from .store import MAX_NAME, Store, check_name, open_store, thread_map

if TYPE_CHECKING:
    from .datasets import Dataset
    from .runs import RunKey

PREFIX = "sweeps"
# options that say where and how a sweep runs (and its name), not what it is
NOT_RECORDED = ("store", "device", "runner", "seed_chunk", "sweep", "slot_limit")


def check_sweep_name(name: str) -> str:
    """A sweep name: a store name short enough for its record's file name."""
    return check_name(name, "sweep name", MAX_NAME - len(".json"))


def named(opts: Options, fingerprint: str) -> Options:
    """``opts`` with ``sweep`` set: ``--sweep``, or a readable name derived
    from what defines the sweep's runs,
    ``<archs>-p<problems>-s<seeds>-e<epochs>-<hash>``, where the hash covers
    the dataset's ``fingerprint`` and every other option that changes a run
    (so a changed dataset file gets a sweep of its own)."""
    if opts.sweep:
        return opts
    rest = {k: getattr(opts, k) for k in ("lr", "batch_size", "checkpoints", "classes_per_problem", "precision")}
    if opts.problem_kind == "ovr":  # pairs and groups keep the names they had before problem kinds
        rest["problem_kind"] = opts.problem_kind
    rest["fingerprint"] = fingerprint
    digest = json_digest(rest, 6)
    return replace(opts, sweep=check_sweep_name(f"{'+'.join(opts.archs)}-p{opts.problems}-s{opts.seeds}-e{opts.epochs}"
                                                f"-{digest}"))


def record_key(dataset: str, sweep: str) -> str:
    return f"{PREFIX}/{check_name(dataset, 'dataset name')}/{check_sweep_name(sweep)}.json"


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


_DAMAGED, _MISSING = object(), object()  # a record that is JSON null is neither


def _read(st: Store, key: str) -> dict | None:
    """The record under ``key``, checked against the one schema of a sweep
    record (``check_record``); None if there is none."""
    value = st.get_json(key, damaged=_DAMAGED, missing=_MISSING)
    if value is _MISSING:
        return None
    if value is _DAMAGED:
        raise WeightsimError(f"{st.uri}/{key} is damaged: record the sweep again with 'weightsim train'")
    problem = check_record(value, key)
    if problem:
        raise WeightsimError(f"{st.uri}/{key} is not a sweep record: {problem}")
    return value


def check_record(value, key: str) -> str | None:
    """What is wrong with ``value`` as the record stored under ``key``
    (None: nothing). A record is an object with ``name`` (its file's name),
    ``options`` (an object), ``dataset`` (an object with text ``name``, that
    of its folder, and ``fingerprint``), ``runs`` (arch → weight-table keys
    of that dataset and arch) and optionally ``problems``, ``adaptations``
    (lists of text), ``created`` (text) and ``imported`` (an object)."""
    folder, _, file = key.removeprefix(f"{PREFIX}/").partition("/")
    if not isinstance(value, dict):
        return "not a JSON object"
    if value.get("name") != file.removesuffix(".json"):
        return f"its name {str(value.get('name'))[:40]!r} is not its file's name {file.removesuffix('.json')!r}"
    dataset = value.get("dataset")
    if not isinstance(dataset, dict) or dataset.get("name") != folder or not isinstance(dataset.get("fingerprint"),
                                                                                       str):
        return f"dataset must be an object with the name {folder!r} and a fingerprint"
    if not isinstance(value.get("options"), dict):
        return "options must be an object"
    runs = value.get("runs")
    if not isinstance(runs, dict) or not runs:
        return "runs must be an object of arch → weight-table keys"
    for arch, keys in runs.items():
        prefix = f"weights/dataset={folder}/arch={arch}/"
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            return f"runs of {str(arch)[:40]!r} must be a list of weight-table keys"
        wrong = next((k for k in keys if not (k.startswith(prefix) and k.endswith(".parquet") and _key_ok(k))), None)
        if wrong is not None:
            return f"run {wrong[:120]!r} is listed under arch {arch!r} but is not a table of it"
    for field in ("problems", "adaptations"):
        if not isinstance(value.get(field, []), list) or not all(isinstance(x, str) for x in value.get(field, [])):
            return f"{field} must be a list of text"
    if not isinstance(value.get("created", ""), str) or not isinstance(value.get("imported", {}), dict):
        return "created must be text and imported an object"
    return None


def _key_ok(key: str) -> bool:
    """Whether ``key`` is a valid store key (no ``..``, no odd characters)."""
    try:
        return all(check_name(part) for part in key.split("/"))
    except WeightsimError:
        return False


def load(store: str | Store, name: str, dataset: str | None = None) -> dict:
    """The record of sweep ``name`` (of ``dataset``: a dataset's name, or
    the path/URI it was loaded from; needed only when several datasets have
    a sweep of that name)."""
    from .datasets import dataset_name

    st = open_store(store)
    check_sweep_name(name)
    st.invalidate()
    names = None if dataset is None else {dataset, dataset_name(dataset)}
    keys = [k for k in st.glob(f"{PREFIX}/*/{name}.json") if names is None or k.split("/")[1] in names]
    if not keys:
        raise SweepNotFound(_not_found(st, name))
    if len(keys) > 1:
        names = ", ".join(k.split("/")[1] for k in keys)
        raise WeightsimError(f"sweep {name} exists for several datasets ({names}): give --dataset")
    record = _read(st, keys[0])
    options = record.get("options") or {}
    if "problem_kind" not in options:  # recorded before problem kinds: k-class groups were drawn for k != 2
        options["problem_kind"] = "pairs" if options.get("classes_per_problem", 2) == 2 else "groups"
    return record


def _not_found(st: Store, name: str) -> str:
    """Why sweep ``name`` is not in the store: the names it holds, or that it holds none."""
    names = sorted({k.rsplit("/", 1)[1].removesuffix(".json") for k in st.glob(f"{PREFIX}/*/*.json")})
    if not names:
        return (f"no sweep '{name}' in store {st.uri}: it holds no sweeps (give the --store that holds it, or "
                f"record one with 'weightsim train' or 'weightsim run')")
    shown = ", ".join(names[:20]) + (f", … ({len(names) - 20} more: weightsim sweeps)" if len(names) > 20 else "")
    return f"no sweep '{name}' in store {st.uri}; recorded sweeps: {shown}"


def table_uris(store: str | Store, record: dict) -> dict[str, list[str]]:
    """Weight-table URIs of the sweep's runs per arch (runs that diverged
    have none, ``divergence.divergence_of``); a ``WeightsimError`` naming how
    many others are missing."""
    from .divergence import divergence_of

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
    ``archs``, ``trained`` (tables present), ``total`` and ``analysed``; a
    record that is damaged or breaks the schema is listed with ``damaged``
    (why) and nothing else known."""
    from .tables import WEIGHTS_GLOB

    st = open_store(store)
    st.invalidate()

    def read(key: str) -> dict | None:
        try:
            return _read(st, key)
        except WeightsimError as exc:  # one damaged record hides no other
            return {"damaged": str(exc), "name": key.rsplit("/", 1)[-1].removesuffix(".json"),
                    "dataset": {"name": key.split("/")[1]}, "runs": {}}

    records = [r for r in thread_map(read, st.glob(f"{PREFIX}/*/*.json"), st.read_workers(16)) if r is not None]
    present = set(st.glob(WEIGHTS_GLOB))
    out = []
    for r in records:
        if "damaged" in r:
            out.append({"name": r["name"], "dataset": r["dataset"]["name"], "created": "", "archs": [],
                        "trained": 0, "total": 0, "analysed": False, "damaged": r["damaged"]})
            continue
        keys = [k for ks in r["runs"].values() for k in ks]
        ds = r.get("dataset", {}).get("name", "?")
        out.append({"name": r["name"], "dataset": ds, "created": r.get("created", ""), "archs": list(r["runs"]),
                    "trained": sum(k in present for k in keys), "total": len(keys),
                    "analysed": st.exists(f"reports/{ds}/{r['name']}/summary.json")})
    return sorted(out, key=lambda e: e["created"], reverse=True)
