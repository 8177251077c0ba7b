"""What the analysis finds in solution sets, free of the store: the
statistics of one solution set (``analyze_solution_set``: HTT on every
representation with its controls, within/between similarity, retrieval, the
2-D projection), function beside weights, over training time, below-chance
checks, the leak check over the archs of a sweep and cross tests between
solution sets of the same shape. ``analysis`` runs them on a sweep's runs and
keeps their records in the store (docs/method.md §4–6)."""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from . import activations, design, efficiency, htt, inits, representations, seeding, similarity
from .design import ALPHA
from .errors import WeightsimError
from .representations import SolutionSet


LEAK_ALPHA = 0.05  # family-wise level of the leak check over the archs of a sweep (Holm)


HEATMAP_RUNS = 240  # runs shown in similarity heatmaps and histograms (the same number per problem)


PAIRWISE_RUNS = 120  # runs in the function-based pairwise tests (CKA, Procrustes): stratified, >= 2 per problem


def _projection2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    z = torch.from_numpy(np.asarray(x, np.float32))
    z = (z - z.mean(0)) / z.std(0).clamp_min(1e-12)
    with seeding.seeded(seed):  # the global RNG stays as the caller left it
        u, s, _ = torch.svd_lowrank(z, q=min(6, *z.shape), niter=4)
    return (u[:, :2] * s[:2]).double().numpy()


def analyze_solution_set(ss: SolutionSet, n_permutations: int = 200, seed: int = 0,
                         init_labels: np.ndarray | None = None) -> tuple[dict, dict]:
    """(summary entry, arrays for the figures) of one solution set;
    ``init_labels`` (N,): its runs' initializations (``inits.labels``; None:
    not checked), whose shared ones group the HTT split."""
    t0 = time.perf_counter()
    labels = ss.runs.problem.to_numpy()
    n_problems = len(np.unique(labels))
    results = {name: htt.hypothesis_training_testing(ss.get(name), labels, n_permutations=n_permutations, seed=seed,
                                                     inits=init_labels)
               for name in ss.names()}
    wb = {name: similarity.within_between(ss.get(name), labels, n_permutations=n_permutations, seed=seed).to_dict()
          for name in representations.NAMES if name in ss.matrices}
    entry = {
        "arch": ss.arch, "spec": ss.spec.to_dict(), "training": ss.training, "n_runs": len(ss.runs),
        "n_problems": n_problems, "problems": [str(p) for p in np.unique(labels)], "n_permutations": n_permutations,
        "n_seeds": int(ss.runs.groupby("problem").size().min()),
        "mean_test_accuracy": float(ss.runs.test_accuracy.mean()),
        "min_test_accuracy": float(ss.runs.test_accuracy.min()),
        "htt_model": htt.MODEL,
        "htt": {name: r.to_dict() for name, r in results.items()},
        "effect_size": {name: htt.effect_size(r) for name, r in results.items()},
        "similarity": {**wb["chain"], "representation": "chain (cosine)"},
        "similarity_baselines": {k: v for k, v in wb.items() if k != "chain"},
        "decision": htt.decision(results["chain"], ALPHA),
        "note_exploratory": EXPLORATORY,
        "bad_runs": ss.bad,
        "shared_inits": inits.describe(init_labels, labels),
        "seconds": 0.0,
    }
    grouped = entry["shared_inits"]["grouped"]
    if grouped:
        floor = htt.split_floor(labels, inits=init_labels, n_permutations=n_permutations, seed=seed)
        if not floor.can_reject:
            entry["shared_inits"]["note"] += (f"; with the grouped split the smallest p-value is {floor.smallest:.3g} "
                                              f"({floor.labellings:.4g} distinct training labellings), so H0 "
                                              f"cannot be rejected at α = {ALPHA:g}")
    below = below_chance(results)
    if below:
        entry["warning_below_chance"] = (
            f"held-out accuracy significantly below chance (lower-tail binomial p ≤ α = {ALPHA:g}) for "
            f"{', '.join(below)}: a design confound, not a result; e.g. runs of different problems that share "
            f"their initialization (a held-out run then looks most like its twin of another problem)")
    if 1 / (n_permutations + 1) > ALPHA:
        entry["warning_permutations"] = (f"with {n_permutations} label permutations the permutation p-value cannot go "
                                         f"below {1 / (n_permutations + 1):.3g} > α={ALPHA}: H0 cannot be rejected; "
                                         f"use at least {int(round(1 / ALPHA)) - 1} permutations")
    if n_problems >= 4:
        entry["retrieval"] = htt.retrieval(ss.get("chain"), labels, seed=seed).to_dict()
    sub = similarity.subsample_per_problem(labels, HEATMAP_RUNS)
    if ss.probes >= 4:  # debiased CKA needs 4 probe inputs
        entry["function"] = function_vs_weights(ss, similarity.subsample_per_problem(labels, PAIRWISE_RUNS, 2),
                                                n_permutations, seed, init_labels)
    entry["efficiency"] = {"sizes": [], "note": "left out: its splits do not keep shared initializations together"} \
        if grouped else efficiency.curve({n: ss.get(n) for n in efficiency.REPRESENTATIONS if n in ss.matrices},
                                         labels, n_permutations=n_permutations, alpha=ALPHA, seed=seed)
    arrays = {"labels": labels.astype(str), "test_accuracy": ss.runs.test_accuracy.to_numpy(float),
              "projection": _projection2d(ss.get("chain"), seed), "sample": sub,
              "similarity": similarity.cosine_matrix(ss.get("chain")[sub]).astype(np.float32),
              "similarity_raw": similarity.cosine_matrix(ss.get("raw")[sub]).astype(np.float32)}
    entry["seconds"] = time.perf_counter() - t0
    return entry, arrays


EXPLORATORY = (f"only the chain row decides at α = {ALPHA:g}; the other HTT rows (controls, baselines, each chain "
               f"depth) are exploratory: their p-values are not corrected for multiplicity")


def below_chance(results: dict[str, htt.HTTResult]) -> list[str]:
    """The representations whose held-out accuracy lies below chance beyond
    α (lower-tail binomial test): where the held-out runs resemble other
    problems' runs more than their own."""
    from scipy import stats

    return [name for name, r in results.items()
            if stats.binom.cdf(int(round(r.accuracy * r.n_test)), r.n_test, r.chance) <= ALPHA]


def epoch_permutations(n_permutations: int, n_epochs: int) -> int:
    """Label permutations per epoch: at least ``n_permutations``, and enough
    that the p-value floor 1/(B+1) lies at half the smallest Holm threshold
    α/E, so that every epoch can be found significant."""
    return max(n_permutations, math.ceil(2 * n_epochs / ALPHA) - 1)


OVER_TIME_TEST = ("per epoch, the chain HTT's p-value is the larger of p_binomial and p_perm (H0 is rejected when "
                  "both reject); the epochs' p-values are Holm-corrected at family-wise α = {alpha:g} over the {n} "
                  "epochs tested, so the chance that any epoch is declared significant under H0 is at most α")


def over_time(matrices: Iterable[tuple[int, np.ndarray]], labels: np.ndarray, n_permutations: int = 200,
              seed: int = 0, n_epochs: int | None = None, init_labels: np.ndarray | None = None) -> dict:
    """HTT (chain) and within/between similarity per checkpoint epoch.

    ``matrices``: (epoch, (N, D) chain features) in epoch order, ``labels``
    (N,) problems, ``init_labels`` (N,) initializations (grouping the split). Returns ``epochs``, ``rows`` (per epoch: accuracy, CI,
    chance, p-values, ``significant`` after Holm, within/between means and
    p), ``first_significant`` (the first epoch rejected, or None),
    ``n_permutations`` (``epoch_permutations``) and ``test`` (the correction,
    in words)."""
    b = epoch_permutations(n_permutations, n_epochs or 1)
    rows = []
    for epoch, x in matrices:
        r = htt.hypothesis_training_testing(x, labels, n_permutations=b, seed=seed, inits=init_labels)
        wb = similarity.within_between(x, labels, n_permutations=n_permutations, seed=seed)
        rows.append({"epoch": int(epoch), "accuracy": r.accuracy, "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "chance": r.chance, "p_binomial": r.p_binomial, "p_permutation": r.p_permutation,
                     "p": max(r.p_binomial, r.p_permutation), "within": wb.within_mean, "between": wb.between_mean,
                     "p_similarity": wb.p_value})
    rejected = htt.holm({row["epoch"]: row["p"] for row in rows}, ALPHA)
    for row in rows:
        row["significant"] = rejected[row["epoch"]]
    first = next((row["epoch"] for row in rows if row["significant"]), None)
    return {"epochs": [row["epoch"] for row in rows], "rows": rows, "first_significant": first,
            "n_permutations": b, "test": OVER_TIME_TEST.format(alpha=ALPHA, n=len(rows))}


def function_vs_weights(ss: SolutionSet, sample: np.ndarray, n_permutations: int = 200, seed: int = 0,
                        init_labels: np.ndarray | None = None) -> dict:
    """Function-based similarity beside the weights': debiased CKA and
    Procrustes distance within vs between problems on the runs ``sample``
    (pairwise measures: a sample bounds their cost), and the paired
    comparison of the ``chain`` and ``activation`` HTT (McNemar) with its
    verdict ``stronger``: weights, function or neither at α."""
    labels = ss.runs.problem.to_numpy()
    k = activations.grams(ss.get("activation")[sample], ss.spec.depth, ss.probes)
    cka = similarity.within_between_matrix(activations.debiased_cka(k), labels[sample], n_permutations, seed)
    proc = similarity.within_between_matrix(activations.procrustes_distance(k), labels[sample], n_permutations,
                                            seed, distance=True)
    pair = htt.paired_comparison(ss.get("chain"), ss.get("activation"), labels, seed=seed, inits=init_labels)
    if pair["p_mcnemar"] <= ALPHA:
        stronger = "weights" if pair["only_a"] > pair["only_b"] else "function"
    else:
        stronger = "neither"
    return {"probes": ss.probes, "n_runs_pairwise": int(len(sample)),
            "pairwise_sample": similarity.describe_sample(labels, sample), "cka": cka.to_dict(),
            "procrustes": proc.to_dict(), "paired": pair, "stronger": stronger}


def check_runs_left(arch: str, problems: Sequence[str], labels: np.ndarray, diverged: Sequence[dict],
                    n_permutations: int) -> dict:
    """Refuse (``WeightsimError``) a solution set where a problem has fewer
    than 2 runs left after divergence; else the entry's fields about the
    diverged runs: ``diverged`` (problem → records) and a note naming them
    (with a warning when the runs left cannot reject at α)."""
    by_problem: dict[str, list[dict]] = {}
    for r in diverged:
        by_problem.setdefault(str(r["problem"]), []).append(r)
    counts = {str(p): int((labels == p).sum()) for p in (problems or np.unique(labels))}
    short = [p for p, n in counts.items() if n < 2]
    if short:
        p = short[0]
        raise WeightsimError(f"{arch}: problem {p} has {counts[p]} run(s) left after {len(by_problem.get(p, []))} "
                             f"diverged: a problem needs at least 2 runs to test; train more seeds or lower the "
                             f"learning rate")
    if not diverged:
        return {}
    named = "; ".join(f"{p}: " + ", ".join(f"seed {r['seed']} (epoch {r['epoch']}, loss {r['loss']})" for r in rs)
                      for p, rs in sorted(by_problem.items()))
    out = {"diverged": by_problem,
           "note_diverged": f"{len(diverged)} run(s) diverged in training and are left out of the analysis: {named}"}
    floor = design.design_floor(list(counts.values()), n_permutations, ALPHA)
    if not floor.can_reject:
        out["note_diverged"] += (f"; with the runs left the smallest p-value is {floor.smallest:.3g}, so H0 "
                                 f"cannot be rejected at α = {ALPHA:g}")
    return out


def cross_tests(sets: dict[str, SolutionSet]) -> list[dict]:
    """Representation fit on one solution set, tested on every other of the
    same kind and feature shape (e.g. relu vs tanh RNN)."""
    out = []
    for a, sa in sets.items():
        for b, sb in sets.items():
            xa, xb = sa.get("chain"), sb.get("chain")
            if a == b or xa.shape[1] != xb.shape[1] or sa.spec.kind != sb.spec.kind:
                continue
            try:
                r = htt.cross_test(xa, sa.runs.problem.to_numpy(), xb, sb.runs.problem.to_numpy())
            except WeightsimError:
                continue
            out.append({"fit": a, "evaluate": b, "representation": "chain", **r})
    return out


LEAK_CHECK = (f"the untrained control's permutation p-values of all archs, Holm-corrected at family-wise "
              f"α = {LEAK_ALPHA:g}: under H0 (no leak) at most a {LEAK_ALPHA:.0%} chance that any arch is flagged")


def with_leak_check(records: dict[str, dict]) -> dict[str, dict]:
    """The archs' summary entries with the leak check (``LEAK_CHECK``) as one
    decision over all of them: ``leak`` per arch, and a warning where set.
    An arch without an untrained control (imported networks have no epoch
    0) is not checked: ``leak`` None and a note saying so."""
    untrained = {a: r["entry"]["htt"]["untrained"] for a, r in records.items() if "untrained" in r["entry"]["htt"]}
    flagged = htt.holm({a: u["p_permutation"] for a, u in untrained.items()}, LEAK_ALPHA)
    out = {}
    for arch, rec in records.items():
        entry = {**rec["entry"], "leak": flagged.get(arch)}
        if arch not in untrained:
            entry["note_control"] = ("no untrained control: the runs have no epoch-0 checkpoint (imported "
                                     "networks), so the leak check could not be made")
        if flagged.get(arch):
            u = untrained[arch]
            entry["warning"] = (f"LEAK: untrained networks are classified above chance (accuracy {u['accuracy']:.3f} "
                                f"vs {u['chance']:.3f}, p_perm={u['p_permutation']:.3g}, significant after Holm "
                                f"over {len(records)} arch(s) at α={LEAK_ALPHA:g}); results of this solution set "
                                f"cannot be trusted")
        out[arch] = entry
    return out
