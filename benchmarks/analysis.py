"""Analysis benchmarks: the whole analysis of a solution set as the
pipeline runs it (``weightsim.analysis.analyze``: representations streamed
from the weight tables and cached, hypothesis-training-testing of every
representation and control with B = 200, within/between similarity,
retrieval, the summary), timed end to end.

- ``seconds_120``: 120 digits MLP runs (10 problems × 12 seeds), cold feature
  cache (best of three, the cache and reports removed before each);
  ``warm_cache_seconds_120``: representations from the cache, tests
  recomputed; ``rerun_seconds_120``: nothing changed, so nothing recomputed.
- ``scale``: N = 500 … 5,000 digits MLP runs (50 three-class problems × N/50
  seeds, 2 epochs: the analysis does not depend on how long they trained),
  each N in a fresh process, cold cache: seconds and the process's peak RSS.
- ``paper_size``: 3072-500-500-500 MLPs from initialization-only tables (the
  cost does not depend on training), 10 problems, N = 250 … 1,000, each in
  a fresh process: seconds, peak RSS, and the time projected to 5,000.
- ``beyond``: what the analysis over training time and the function-based
  representations add, cold cache, rounds interleaved, per arch of digits
  (10 problems × 12 seeds, 10 epochs): the same runs' analysis with and
  without the dataset (``function_ratio``: activations, CKA, Procrustes and
  their tests), and the analysis of runs keeping checkpoints 0,1,2,3,5,10
  against the same runs keeping 0,10 (``epochs_ratio``: four more epochs).

- ``htt_memory``: peak RSS of one chain HTT of 600 runs (20 problems × 30
  seeds, 2,048 features) with the permutations of the analysis over E = 1
  and E = 21 epochs (B = 200 and 4,199), the null scored in blocks of
  ``htt.PERMUTATION_BLOCK`` labellings against all B + 1 at once (as it
  was), each in a fresh process.

    python -m benchmarks.analysis point STORE ARCH N_PROBLEMS N_SEEDS   (one measurement, JSON)
    python -m benchmarks.analysis htt-memory                            (peak RSS of the HTT null, JSON)
    python -m benchmarks.analysis beyond                                (over time and function, JSON)
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from weightsim import analysis, query, sweep, tables
from weightsim.archs import ArchSpec, initial_state
from weightsim.config import Options
from weightsim.problems import Problem
from weightsim.runs import RunKey, TrainConfig


def _clear(store: str) -> None:
    for folder in ("features", "reports"):
        shutil.rmtree(os.path.join(store, folder), ignore_errors=True)


def _trained(store: str, opts: Options) -> dict[str, list[str]]:
    dataset, keys = sweep.plan_sweep(opts)
    sweep.train_missing(store, keys, dataset)
    return sweep.locate(store, keys)


def _analyze(store: str, uris: dict[str, list[str]], name: str = "bench", dataset: str = "digits",
             data: str | None = None) -> float:
    t0 = time.perf_counter()
    analysis.analyze(store, dataset, "bench", uris, name, n_permutations=200, data=data)
    return time.perf_counter() - t0


def bench_analysis_120(store: str | None = None, rounds: int = 3) -> dict:
    """Cold, warm-cache and unchanged-rerun analysis of 120 digits MLP runs."""
    with tempfile.TemporaryDirectory() as tmp:
        store = store or tmp
        uris = _trained(store, Options(archs="mlp", problems=10, seeds=12, epochs=10, store=store))
        cold, warm, rerun = [], [], []
        for _ in range(rounds):
            _clear(store)
            cold.append(_analyze(store, uris))
            shutil.rmtree(os.path.join(store, "reports"))
            warm.append(_analyze(store, uris))
            rerun.append(_analyze(store, uris))
    return {"seconds_120": min(cold), "warm_cache_seconds_120": min(warm), "rerun_seconds_120": min(rerun),
            "rounds": rounds, "n": 120}


def bench_beyond(archs: str = "mlp,cnn", rounds: int = 3) -> dict:
    """Seconds of the analysis (cold cache, best of ``rounds``, sides
    interleaved) per arch: ``weights`` (checkpoints 0,10, no dataset),
    ``epochs`` (checkpoints 0,1,2,3,5,10, no dataset), ``function``
    (checkpoints 0,10, with the dataset), and the ratios to ``weights``."""
    out = {}
    with tempfile.TemporaryDirectory() as store:
        for arch in archs.split(","):
            few = _trained(store, Options(archs=arch, problems=10, seeds=12, epochs=10, store=store))
            many = _trained(store, Options(archs=arch, problems=10, seeds=12, epochs=10, store=store,
                                           checkpoints="0,1,2,3,5,10"))
            sides = {"weights": lambda: _analyze(store, few), "epochs": lambda: _analyze(store, many),
                     "function": lambda: _analyze(store, few, data="digits")}
            times: dict[str, list[float]] = {k: [] for k in sides}
            for _ in range(rounds):
                for name, run in sides.items():
                    _clear(store)
                    times[name].append(run())
            best = {k: min(v) for k, v in times.items()}
            out[arch] = {**best, "epochs_ratio": best["epochs"] / best["weights"],
                         "function_ratio": best["function"] / best["weights"], "rounds": rounds, "n": 120}
    return out


def _point(store: str, arch: str, n_problems: int, n_seeds: int) -> dict:
    """Analysis of the first n_problems × n_seeds runs of ``arch`` in a fresh
    process (cold cache): seconds and peak RSS."""
    _clear(store)
    p = subprocess.run([sys.executable, "-m", "benchmarks.analysis", "point", store, arch, str(n_problems),
                        str(n_seeds)], capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def _select(store: str, arch: str, n_problems: int, n_seeds: int) -> tuple[str, list[str]]:
    df = query.query(store)
    df = df[df.arch == arch]
    problems = sorted(df.problem.unique())[:n_problems]
    df = df[df.problem.isin(problems) & (df.seed < n_seeds)]
    return str(df.dataset.iloc[0]), sorted(df.uri)


def measure_point(store: str, arch: str, n_problems: int, n_seeds: int) -> dict:
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dataset, uris = _select(store, arch, n_problems, n_seeds)
    seconds = _analyze(store, {arch: uris}, f"n{len(uris)}", dataset)
    return {"n": len(uris), "seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "rss_after_imports_gb": rss0 / 1e6}


def bench_analysis_scale(sizes=(500, 1000, 2000, 5000), store: str | None = None) -> list[dict]:
    """Digits MLPs, 50 three-class problems × N/50 seeds, each N in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        store = store or tmp
        _trained(store, Options(archs="mlp", problems=50, seeds=max(sizes) // 50, epochs=2, classes_per_problem=3,
                                store=store))
        return [_point(store, "mlp", 50, n // 50) for n in sizes]


PAPER_SPEC = ArchSpec("mlp", (3072,), (500, 500, 500), 2)


def write_init_tables(store: str, n: int, problems: int = 10) -> None:
    """Initialization-only weight tables of paper-size MLPs: real run keys
    (one epoch of training configured), whose final checkpoint is the
    initialization itself; ``problems`` problems."""
    config = TrainConfig(epochs=1, lr=0.1, batch_size=128)

    def runs():
        for i in range(n):
            p, seed = i % problems, i // problems
            key = RunKey("bench", "paper-init", Problem((2 * p, 2 * p + 1)), "mlp-paper", PAPER_SPEC, seed, config)
            init = initial_state(PAPER_SPEC, i)
            yield key.key, {0: init, 1: init}, {
                "run_id": key.run_id, "seed": seed, "arch": key.arch, "spec": PAPER_SPEC.to_dict(),
                "config": config.to_dict(), "metrics": {"test_accuracy": 0.5}, "device": "cpu",
                "dataset": {"name": "bench", "fingerprint": "paper-init", "source": "benchmark"},
                "problem": {"name": key.problem.name, "classes": list(key.problem.classes)}}

    tables.write_many(store, runs())


def bench_analysis_paper_size(sizes=(250, 500, 1000)) -> list[dict]:
    """Paper-size MLPs streamed from tables, each N in a fresh process;
    ``projected_seconds_5000`` scales the largest N linearly."""
    with tempfile.TemporaryDirectory() as store:
        write_init_tables(store, max(sizes))
        out = [_point(store, "mlp-paper", 10, n // 10) for n in sizes]
    out[-1]["projected_seconds_5000"] = out[-1]["seconds"] * 5000 / out[-1]["n"]
    return out


HTT_MEMORY = """
import resource, sys
import numpy as np
from weightsim import htt
from weightsim.findings import epoch_permutations
b = epoch_permutations(200, int(sys.argv[1]))
if sys.argv[2] == "whole":
    htt.PERMUTATION_BLOCK = b + 1
rng = np.random.default_rng(0)
y = np.repeat(np.arange(20), 30)
x = rng.standard_normal((600, 2048)) + 0.3 * rng.standard_normal((20, 2048))[y]
r = htt.hypothesis_training_testing(x, y, n_permutations=b)
print(b, r.p_permutation, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def bench_htt_memory() -> list[dict]:
    """Peak RSS (MiB) of the HTT null at E = 1 and 21, streamed vs whole."""
    rows = []
    for epochs in (1, 21):
        for null in ("streamed", "whole"):
            out = subprocess.run([sys.executable, "-c", HTT_MEMORY, str(epochs), null], capture_output=True,
                                 text=True, check=True).stdout.split()
            rows.append({"epochs": epochs, "null": null, "permutations": int(out[0]), "p_permutation": float(out[1]),
                         "peak_rss_mib": int(out[2])})
    return rows


def growth(points: list[dict]) -> float:
    """Exponent b of seconds ∝ N^b between the smallest and the largest N."""
    a, b = points[0], points[-1]
    return float(np.log(b["seconds"] / a["seconds"]) / np.log(b["n"] / a["n"]))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "point":
        print(json.dumps(measure_point(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
    elif len(sys.argv) == 2 and sys.argv[1] == "beyond":
        print(json.dumps(bench_beyond(), indent=1))
    elif len(sys.argv) == 2 and sys.argv[1] == "htt-memory":
        print(json.dumps(bench_htt_memory(), indent=1))
    else:
        sys.exit(__doc__)
