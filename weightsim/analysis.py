"""Analysis of solution sets: similarity, hypothesis-training-testing,
retrieval and controls, written to ``reports/<dataset>/`` in the store.

For every arch of a dataset it computes, on the same runs:

- representations of the final weights: ``chain`` (chain features, all
  depths), ``chain_depth<l>`` (one depth each), ``cka`` (centred chain
  features), ``canonical``, ``scale`` (scale-normalized, unsorted),
  ``matched`` (weight matching to a reference run) and ``raw``;
- the **untrained** control: chain features of the same runs' epoch-0
  checkpoints (same archs, same seeds, freshly initialized). It must come out
  at chance; if it does not, the pipeline leaks and the summary says so;
- hypothesis-training-testing on every representation, within- vs
  between-problem similarity with a permutation test, retrieval on unseen
  problems, and cross tests between solution sets of the same shape (e.g.
  ``rnn`` vs ``rnn-tanh``).

``summary.json`` (contract of DESIGN.md): ``{"dataset", "fingerprint", "alpha",
"archs": {arch: {"n_runs", "mean_test_accuracy", "htt": {rep: HTTResult},
"similarity": {"within_mean", "between_mean", "p_value", ...}, ...}},
"cross": [...]}``. Arrays for the figures go to ``arrays-<arch>.npz``.
"""
from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import __version__, chain, htt, similarity
from .archs import ArchSpec
from .errors import TableError, WeightsimError
from .store import Store, open_store, thread_map
from .tables import read_run_epochs

ALPHA = 0.01
BASELINES = ("cka", "canonical", "scale", "matched", "raw")


@dataclass
class SolutionSet:
    """The runs of one (dataset, arch): final and initial weights stacked."""

    arch: str
    spec: ArchSpec
    final: chain.Stack
    init: chain.Stack
    runs: pd.DataFrame  # run_id, problem, seed, test_accuracy, uri (ordered by problem, seed)
    bad: list[str]


def read_tables(store: str | Store, uris: Sequence[str], workers: int | None = None) -> list[list | TableError]:
    """Final and epoch-0 checkpoints of every table (parallel reads, one per
    table, ``workers`` threads, default ``Store.read_workers(8)``); a table
    that fails verification gives its ``TableError``."""
    st = open_store(store)

    def read(uri):
        try:
            return read_run_epochs(uri, [None, 0], st)
        except TableError as exc:
            return exc

    return thread_map(read, uris, workers or st.read_workers(8))


def bad_tables_error(errors: Sequence[TableError], what: str) -> WeightsimError:
    return WeightsimError(f"{len(errors)} bad weight table(s) for {what} (use --skip-bad to leave them out): "
                          + "; ".join(str(e) for e in errors))


def load_solution_set(store: str | Store, arch: str, uris: Sequence[str], skip_bad: bool = False,
                      workers: int | None = None) -> SolutionSet:
    """Read every run's final and epoch-0 weights. Bad tables raise one
    ``WeightsimError`` listing them all, or are left out and listed in
    ``.bad`` with ``skip_bad``."""
    results = read_tables(store, uris, workers)
    errors = [r for r in results if isinstance(r, TableError)]
    bad = [e.uri for e in errors]
    if errors and not skip_bad:
        raise bad_tables_error(errors, arch)
    good = [r for r in results if not isinstance(r, TableError)]
    if not good:
        raise WeightsimError(f"no readable runs for arch {arch}")
    specs = {r[0].spec for r in good}
    if len(specs) > 1:
        raise WeightsimError(f"runs of arch {arch} have {len(specs)} different specs; analyze one spec at a time")
    spec = specs.pop()
    df = pd.DataFrame([{k: r[0].meta[k] for k in ("run_id", "problem", "seed", "test_accuracy")} | {"uri": r[0].uri}
                       for r in good])
    order = df.sort_values(["problem", "seed"]).index.to_numpy()
    good = [good[i] for i in order]
    return SolutionSet(arch, spec, chain.stack([r[0].state_dict for r in good], spec),
                       chain.stack([r[1].state_dict for r in good], spec), df.loc[order].reset_index(drop=True), bad)


def representations(ss: SolutionSet, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every representation of the solution set (see the module doc),
    computed on ``device`` over the whole stack at once, returned on the CPU."""
    final = {k: v.to(device) for k, v in ss.final.items()}
    init = {k: v.to(device) for k, v in ss.init.items()}
    reps = {"chain": chain.features_stack(final, ss.spec),
            "untrained": chain.features_stack(init, ss.spec)}
    for d in range(1, ss.spec.depth + 2):
        reps[f"chain_depth{d}"] = chain.features_stack(final, ss.spec, depth=d)
    for name in BASELINES:
        reps[name] = similarity.representation(final, ss.spec, name)
    return {name: x.cpu() for name, x in reps.items()}


def _projection2d(x: torch.Tensor) -> np.ndarray:
    z = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
    u, s, _ = torch.linalg.svd(z, full_matrices=False)
    return (u[:, :2] * s[:2]).numpy()


def analyze_solution_set(ss: SolutionSet, n_permutations: int = 200, seed: int = 0,
                         device: str = "cpu") -> tuple[dict, dict, torch.Tensor]:
    """(summary entry, arrays for the figures, chain features) of one solution
    set; the representations are computed on ``device``."""
    t0 = time.perf_counter()
    labels = ss.runs.problem.to_numpy()
    n_problems = len(np.unique(labels))
    reps = representations(ss, device)
    results = {name: htt.hypothesis_training_testing(x.numpy(), labels, n_permutations=n_permutations, seed=seed)
               for name, x in reps.items()}
    sims = {name: similarity.cosine_matrix(x) for name, x in reps.items() if not name.startswith("chain_depth")}
    wb = {name: similarity.within_between(s, labels, n_permutations=max(n_permutations, 999), seed=seed).to_dict()
          for name, s in sims.items()}
    chain_result, untrained = results["chain"], results["untrained"]
    leak = untrained.p_permutation < 0.05 or untrained.p_binomial < 0.05
    entry = {
        "arch": ss.arch, "spec": ss.spec.to_dict(), "n_runs": len(ss.runs), "n_problems": n_problems,
        "n_seeds": int(ss.runs.groupby("problem").size().min()),
        "mean_test_accuracy": float(ss.runs.test_accuracy.mean()),
        "min_test_accuracy": float(ss.runs.test_accuracy.min()),
        "htt": {name: r.to_dict() for name, r in results.items()},
        "effect_size": {name: htt.effect_size(r) for name, r in results.items()},
        "similarity": {**wb["chain"], "representation": "chain (cosine)"},
        "similarity_baselines": {k: v for k, v in wb.items() if k != "chain"},
        "decision": htt.decision(chain_result, ALPHA),
        "leak": bool(leak),
        "bad_runs": ss.bad,
        "seconds": 0.0,
    }
    if leak:
        entry["warning"] = (f"LEAK: untrained networks are classified above chance (accuracy "
                            f"{untrained.accuracy:.3f} vs {untrained.chance:.3f}, p_perm={untrained.p_permutation:.3g}); "
                            f"results of this solution set cannot be trusted")
    if 1 / (n_permutations + 1) > ALPHA:
        entry["warning_permutations"] = (f"with {n_permutations} label permutations the permutation p-value cannot go "
                                         f"below {1 / (n_permutations + 1):.3g} > α={ALPHA}: H0 cannot be rejected; "
                                         f"use at least {int(round(1 / ALPHA)) - 1} permutations")
    if n_problems >= 4:
        entry["retrieval"] = htt.retrieval(reps["chain"].numpy(), labels, seed=seed).to_dict()
    arrays = {"labels": labels.astype(str), "similarity": sims["chain"].astype(np.float32),
              "similarity_raw": sims["raw"].astype(np.float32), "projection": _projection2d(reps["chain"]),
              "test_accuracy": ss.runs.test_accuracy.to_numpy(float)}
    entry["seconds"] = time.perf_counter() - t0
    return entry, arrays, reps["chain"]


def cross_tests(sets: dict[str, SolutionSet], reps: dict[str, torch.Tensor]) -> list[dict]:
    """Representation fit on one solution set, tested on every other of the
    same feature shape and problems (e.g. relu vs tanh RNN)."""
    out = []
    for a, sa in sets.items():
        for b, sb in sets.items():
            if a == b or reps[a].shape[1] != reps[b].shape[1] or sa.spec.kind != sb.spec.kind:
                continue
            try:
                r = htt.cross_test(reps[a].numpy(), sa.runs.problem.to_numpy(), reps[b].numpy(),
                                   sb.runs.problem.to_numpy())
            except WeightsimError:
                continue
            out.append({"fit": a, "evaluate": b, "representation": "chain", **r})
    return out


def report_prefix(dataset: str) -> str:
    return f"reports/{dataset}"


def analyze(store: str | Store, dataset: str, fingerprint: str, uris_by_arch: dict[str, Sequence[str]],
            n_permutations: int = 200, skip_bad: bool = False, seed: int = 0,
            on_arch: Callable[[str, dict], None] | None = None, device: str = "cpu") -> str:
    """Analyze every arch's runs and write ``summary.json`` and the arrays to
    ``reports/<dataset>/``; return the summary's URI. The representations
    of each solution set are computed on ``device`` (e.g. ``cuda``)."""
    st = open_store(store)
    sets, archs, arrays, chain_reps = {}, {}, {}, {}
    for arch, uris in uris_by_arch.items():
        sets[arch] = load_solution_set(st, arch, uris, skip_bad)
        archs[arch], arrays[arch], chain_reps[arch] = analyze_solution_set(sets[arch], n_permutations, seed,
                                                                                 device)
        if on_arch:
            on_arch(arch, archs[arch])
    summary = {"dataset": dataset, "fingerprint": fingerprint, "alpha": ALPHA, "library_version": __version__,
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "archs": archs,
               "cross": cross_tests(sets, chain_reps)}
    prefix = report_prefix(dataset)
    for arch, arr in arrays.items():
        buf = io.BytesIO()
        np.savez_compressed(buf, **arr)
        st.put_bytes(f"{prefix}/arrays-{arch}.npz", buf.getvalue())
    return st.put_bytes(f"{prefix}/summary.json", json.dumps(summary, indent=2).encode())


def load_summary(store: str | Store, dataset: str) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """The summary and figure arrays written by ``analyze``."""
    st = open_store(store)
    prefix = report_prefix(dataset)
    try:
        summary = json.loads(st.get_bytes(f"{prefix}/summary.json"))
    except FileNotFoundError:
        raise WeightsimError(f"no analysis of {dataset} in {st.uri}: run 'weightsim analyze' first") from None
    arrays = {}
    for arch in summary["archs"]:
        with np.load(io.BytesIO(st.get_bytes(f"{prefix}/arrays-{arch}.npz")), allow_pickle=False) as z:
            arrays[arch] = {k: z[k] for k in z.files}
    return summary, arrays
