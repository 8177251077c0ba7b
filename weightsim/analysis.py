"""Analysis of solution sets: similarity, hypothesis-training-testing,
retrieval and controls, written to ``reports/<dataset>/<sweep>/`` in the store.

For every arch of a sweep it computes, on the same runs, from the
representations of ``weightsim.representations`` (streamed from the weight
tables and cached per run):

- hypothesis-training-testing (model: ``htt.MODEL``) on ``chain``, each
  ``chain_depth<l>``, the baselines ``cka``, ``canonical``, ``scale``,
  ``matched``, ``raw``, and the **untrained** control (chain features of the
  same runs' epoch-0 checkpoints, which must come out at chance: if not, the
  pipeline leaks and the summary says so);
- within- vs between-problem similarity with a permutation test, retrieval on
  unseen problems, and cross tests between solution sets of the same shape
  (e.g. ``rnn`` vs ``rnn-tanh``);
- function beside weights (``function_vs_weights``, when the runs' dataset
  is given): HTT on the ``activation`` representation, debiased linear CKA
  and orthogonal-Procrustes distance of the probe activations within vs
  between problems, and which of weights (``chain``) and function
  (``activation``) recovers the problem better (McNemar, same held-out runs);
- over training time (``over_time``): the chain HTT and within/between
  similarity at every checkpoint epoch the runs hold, and the first epoch
  whose H0 is rejected, Holm-corrected over the epochs;
- shared initializations (``inits``): runs whose epoch-0 tensors are
  identical (imported zoos) are kept on one side of every HTT split, and
  the summary says which problems share them (``shared_inits``);
- sample efficiency (``efficiency.curve``): held-out HTT accuracy against the
  number of fitting runs per problem for chain, activation, raw and untrained,
  the fewest runs at which each identifies the problem, and which needs fewer.

Steps and files (each a Prefect task one level up):

- ``analyze_arch`` → ``arch-<arch>.json`` (the arch's summary entry, the key
  of everything it was computed from) and ``arrays-<arch>-<sha256[:12]>.npz``
  (figure data, named by its content so a failed rerun never replaces arrays
  in use; ``summarize`` removes those no summary names); an arch whose inputs
  are unchanged is not recomputed;
- ``summarize`` → ``summary.json`` (contract of docs/design.md: ``{"dataset",
  "fingerprint", "sweep", "alpha", "archs": {arch: {"n_runs",
  "mean_test_accuracy", "htt": {rep: HTTResult}, "similarity": {...}, ...}},
  "cross": [...], "arrays": {arch: {"key", "sha256"}}}``), written last, so a
  summary always names the exact arrays it belongs to.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from . import __version__, activations, catalog, design, efficiency, findings, htt, inits, representations, seeding
from . import similarity
from .codedigest import code_digest
from .design import ALPHA
from .digest import json_digest
from .errors import WeightsimError
from .findings import LEAK_CHECK, analyze_solution_set, check_runs_left, cross_tests, over_time, with_leak_check
from .representations import Settings, SolutionSet
from .store import Store, open_store, thread_map


# the modules whose code computes an arch's analysis from its representations (theirs key the representations)
CODE_MODULES = (activations, design, efficiency, findings, htt, inits, seeding, similarity, sys.modules[__name__])
ANALYSIS_VERSION = code_digest(*CODE_MODULES)


def report_prefix(dataset: str, sweep: str) -> str:
    return f"reports/{dataset}/{sweep}"


def arch_key(p: representations.Plan, n_permutations: int, seed: int) -> str:
    """Everything an arch's analysis depends on: the cache keys of its runs'
    representations (table contents, settings, reference, feature code), the
    checkpoint epochs, the bad tables, the test settings and the analysis
    code. The shared initializations that group the split (``inits``) are
    a function of the table contents and of that code."""
    return json_digest({"keys": p.keys, "bad": sorted(e.uri for e in p.bad), "permutations": n_permutations,
                        "epochs": representations.checkpoint_epochs(p), "names": p.names, "seed": seed,
                        "alpha": ALPHA, "model": htt.MODEL, "version": ANALYSIS_VERSION}, 24, default=str)


def diverged_runs(st: Store, dataset: str, sweep: str, arch: str, uris: Sequence[str]) -> tuple[list[str], list[dict]]:
    """(the recorded sweep's problems, the divergence records of its runs of
    ``arch`` that have no table among ``uris``); nothing when the sweep is
    not recorded."""
    from .divergence import divergence_of

    try:
        record = catalog.load(st, sweep, dataset)
    except WeightsimError:
        return [], []
    have = set(uris)
    absent = [k for k in record["runs"].get(arch, []) if st.key_uri(k) not in have]
    return list(record.get("problems", [])), [r for k in absent if (r := divergence_of(st, k)) is not None]


def _read_json(st: Store, key: str) -> dict | None:
    value = st.get_json(key)
    return value if isinstance(value, dict) else None


def _arrays_ok(st: Store, ref: dict) -> bool:
    try:
        return hashlib.sha256(st.get_bytes(ref["key"])).hexdigest() == ref["sha256"]
    except (FileNotFoundError, KeyError, TypeError):
        return False


def analyze_arch(store: str | Store, dataset: str, sweep: str, arch: str, uris: Sequence[str],
                 n_permutations: int = 200, skip_bad: bool = False, seed: int = 0, device: str = "cpu",
                 settings: Settings = Settings(), on_progress: Callable[[str], None] | None = None,
                 data: str | None = None) -> dict:
    """Analyze one arch's runs and write ``arch-<arch>.json`` and
    ``arrays-<arch>-<sha256[:12]>.npz``; return the record (``key``, ``entry``,
    ``arrays``, ``reused``). When a record with the same ``arch_key`` and
    intact arrays exists, it is returned as it is (``reused``: True).
    ``data``: the runs' dataset (name or URI) for the function-based
    representations (none without it)."""
    st = open_store(store)
    say = on_progress or (lambda _msg: None)
    prefix = report_prefix(dataset, sweep)
    p = representations.plan(st, arch, uris, settings, data=data)
    if p.bad and not skip_bad:
        raise representations.bad_tables_error(p.bad, arch)
    problems, diverged = diverged_runs(st, dataset, sweep, arch, uris)
    left = check_runs_left(arch, problems, np.array([str(m["problem"]["name"]) for m in p.metas]), diverged,
                           n_permutations)
    key = json_digest({"runs": arch_key(p, n_permutations, seed), "diverged": diverged}, 24, default=str)
    old = _read_json(st, f"{prefix}/arch-{arch}.json")
    if old and old.get("key") == key and _arrays_ok(st, old.get("arrays", {})):
        say(f"{arch}: {len(p.uris)} runs unchanged since the last analysis; reusing it")
        return {**old, "reused": True}
    ss = representations.load(st, p, skip_bad, device,
                              lambda done, total: say(f"{arch}: representations of {done}/{total} new runs"))
    say(f"{arch}: {len(ss.runs)} runs ({ss.computed} computed, {len(ss.runs) - ss.computed} from the cache); testing")
    init_labels = inits.labels(st, ss.runs.uri.tolist()) if "untrained" in ss.matrices else None  # needs epoch 0
    entry, arrays = analyze_solution_set(ss, n_permutations, seed, init_labels)
    entry.update(left)
    if p.data_error:
        entry["note_function"] = f"no function-based representation: {p.data_error}"
    entry["over_time"] = _over_time(st, p, ss, n_permutations, seed, device, say, init_labels)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()  # named by content: a failed rerun never replaces arrays in use
    ref = {"key": f"{prefix}/arrays-{arch}-{digest[:12]}.npz", "sha256": digest}
    st.put_bytes(ref["key"], data)
    record = {"key": key, "entry": entry, "arrays": ref, "computed": ss.computed, "library_version": __version__,
              "code": {"analysis": ANALYSIS_VERSION, "representations": representations.CODE_VERSION}}
    st.put_bytes(f"{prefix}/arch-{arch}.json", json.dumps(record, indent=1).encode())
    say(f"{arch}: {entry['decision']}")
    return {**record, "reused": False}


def _over_time(st: Store, p: representations.Plan, ss: SolutionSet, n_permutations: int, seed: int,
               device: str, say: Callable[[str], None], init_labels: np.ndarray | None = None) -> dict:
    """``over_time`` on every checkpoint epoch of the runs: epoch 0 and the
    final epoch from the solution set's ``untrained`` and ``chain``, the
    others from the epoch cache."""
    epochs = representations.checkpoint_epochs(p)
    final = int(ss.training.get("epochs", epochs[-1]))
    row_of = {u: i for i, u in enumerate(p.uris)}
    rows = [row_of[u] for u in ss.runs.uri]
    mid = [e for e in epochs if e not in (0, final)]

    def matrices() -> Iterator[tuple[int, np.ndarray]]:
        if 0 in epochs:
            yield 0, ss.get("untrained")
        yield from representations.epoch_matrices(
            st, p, mid, rows, device, lambda done, total: say(f"{ss.arch}: checkpoint features of {done}/{total} runs"))
        yield final, ss.get("chain")

    return over_time(matrices(), ss.runs.problem.to_numpy(), n_permutations, seed,
                     n_epochs=len(mid) + 1 + (0 in epochs), init_labels=init_labels)


def summarize(store: str | Store, dataset: str, fingerprint: str, sweep: str, records: dict[str, dict],
              uris_by_arch: dict[str, Sequence[str]], skip_bad: bool = False,
              settings: Settings = Settings(), device: str = "cpu") -> str:
    """Cross tests and ``summary.json`` from the archs' records (written
    last, naming each arch's arrays by checksum); return its URI. A summary
    made from the same records is kept as it is."""
    st = open_store(store)
    prefix = report_prefix(dataset, sweep)
    keys = {a: r["key"] for a, r in records.items()}
    old = _read_json(st, f"{prefix}/summary.json")
    if old and old.get("keys") == keys and old.get("fingerprint") == fingerprint:
        return st.key_uri(f"{prefix}/summary.json")  # nothing it was made from has changed
    kinds: dict[str, list[str]] = {}
    for arch, rec in records.items():
        kinds.setdefault(rec["entry"]["spec"]["kind"], []).append(arch)
    paired = [a for group in kinds.values() if len(group) > 1 for a in group]
    sets = {a: representations.load(st, representations.plan(st, a, uris_by_arch[a], settings), skip_bad, device,
                                    names=("chain",)) for a in paired}
    summary = {"dataset": dataset, "fingerprint": fingerprint, "sweep": sweep, "alpha": ALPHA,
               "library_version": ", ".join(sorted({r.get("library_version", "unknown") for r in records.values()})),
               "created": _utc_now(),
               "htt_model": htt.MODEL, "leak_check": LEAK_CHECK, "archs": with_leak_check(records),
               "arrays": {a: r["arrays"] for a, r in records.items()}, "keys": keys, "cross": cross_tests(sets)}
    uri = st.put_bytes(f"{prefix}/summary.json", json.dumps(summary, indent=2).encode())
    named = {r["arrays"]["key"] for r in records.values()}
    st.remove([k for k in st.glob(f"{prefix}/arrays-*.npz") if k not in named])  # from earlier analyses
    return uri


def analyze(store: str | Store, dataset: str, fingerprint: str, uris_by_arch: dict[str, Sequence[str]],
            sweep: str, n_permutations: int = 200, skip_bad: bool = False, seed: int = 0,
            on_progress: Callable[[str], None] | None = None, device: str = "cpu", data: str | None = None) -> str:
    """Every arch (``analyze_arch``), then ``summarize``; the summary's URI."""
    records = {arch: analyze_arch(store, dataset, sweep, arch, uris, n_permutations, skip_bad, seed, device,
                                  on_progress=on_progress, data=data)
               for arch, uris in uris_by_arch.items()}
    return summarize(store, dataset, fingerprint, sweep, records, uris_by_arch, skip_bad, device=device)


def read_summary(store: str | Store, dataset: str, sweep: str, archs: Sequence[str] | None = None,
                 fingerprint: str | None = None) -> dict:
    """The sweep's ``summary.json``; a ``WeightsimError`` when there is none,
    when it is damaged, or when it does not describe ``archs`` (all of them,
    no others) of the dataset version ``fingerprint`` (each when given)."""
    st = open_store(store)
    prefix = report_prefix(dataset, sweep)
    if not st.exists(f"{prefix}/summary.json"):
        raise WeightsimError(f"no analysis of sweep '{sweep}' of {dataset} in store {st.uri}: run 'weightsim analyze "
                             f"--sweep {sweep} --store {st.uri}' first")
    summary = _read_json(st, f"{prefix}/summary.json")
    if summary is None or not isinstance(summary.get("archs"), dict):
        raise WeightsimError(f"{st.uri}/{prefix}/summary.json is damaged (truncated or not a summary): "
                             f"run 'weightsim analyze' again")
    if archs is not None and sorted(summary["archs"]) != sorted(archs):
        raise WeightsimError(f"the analysis of sweep {sweep} covers archs {', '.join(summary['archs'])}, "
                             f"not {', '.join(archs)}: run 'weightsim analyze' with these archs first")
    if fingerprint is not None and summary.get("fingerprint") != fingerprint:
        raise WeightsimError(f"the analysis of sweep {sweep} is of another version of dataset {dataset} "
                             f"(fingerprint {summary.get('fingerprint')}, now {fingerprint}): "
                             f"run 'weightsim analyze' again")
    return summary


def load_summary(store: str | Store, dataset: str, sweep: str, archs: Sequence[str] | None = None,
                 fingerprint: str | None = None) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """The summary (``read_summary``) and figure arrays written by
    ``analyze``; a ``WeightsimError`` unless every arrays file is the one the
    summary names."""
    st = open_store(store)
    prefix = report_prefix(dataset, sweep)
    summary = read_summary(st, dataset, sweep, archs, fingerprint)
    arrays = {}
    for arch in summary["archs"]:
        ref = summary.get("arrays", {}).get(arch, {})
        try:
            data = st.get_bytes(ref["key"])
        except (FileNotFoundError, KeyError, TypeError):
            data = b""
        if hashlib.sha256(data).hexdigest() != ref.get("sha256"):
            raise WeightsimError(f"the figure arrays of {arch} in {st.uri}/{prefix} do not belong to its summary "
                                 f"(missing or from another analysis): run 'weightsim analyze' again")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays[arch] = {k: z[k] for k in z.files}
    return summary, arrays


def _utc_now() -> str:
    """The time now, UTC, to the microsecond: two sweeps analysed within one
    second still have an order (``sweeps_of``: latest first)."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _comparable(created: str) -> str:
    """A ``created`` stamp with microseconds, so that whole-second stamps of
    older summaries order correctly against newer ones."""
    return created if "." in created else created.removesuffix("Z") + ".000000Z"


def sweeps_of(store: str | Store, dataset: str) -> list[dict]:
    """The analysed sweeps of a dataset, latest first: ``sweep``, ``created``,
    ``archs`` (arch → n_runs, chain accuracy, decision) and ``summary`` URI."""
    st = open_store(store)
    keys = st.glob(f"reports/{dataset}/*/summary.json")
    found = thread_map(lambda k: (k, _read_json(st, k)), keys, st.read_workers(16))
    out = []
    for key, s in found:
        if not s or not isinstance(s.get("archs"), dict):
            continue
        archs = {a: {"n_runs": e.get("n_runs"), "chain_accuracy": e.get("htt", {}).get("chain", {}).get("accuracy"),
                     "decision": str(e.get("decision", "")).split(":")[0]} for a, e in s["archs"].items()}
        out.append({"sweep": key.split("/")[2], "created": s.get("created", ""), "archs": archs,
                    "summary": st.key_uri(key)})
    return sorted(out, key=lambda e: _comparable(e["created"]), reverse=True)
