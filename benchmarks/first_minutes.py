"""What a new user waits for, side by side in one run: a command with
nothing new to do on the shared local Prefect server, against the same
command paying for a server start first (a fresh ``PREFECT_HOME``, as every
command did when each started a private server).

Steps, each a real ``weightsim`` process timed from launch to exit:
``run --config quick`` the first time (server start, training, analysis,
report), then ``rounds`` × (``analyze --sweep quick`` and ``run --config
quick`` again) on the running server and on a fresh one, interleaved.

    python -m benchmarks.first_minutes [--rounds 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import emit

EXE = os.path.join(os.path.dirname(sys.executable), "weightsim")


def timed(args: list[str], home: str) -> float:
    """Wall seconds of ``weightsim args`` with PREFECT_HOME ``home`` (no PREFECT_API_URL)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    t0 = time.perf_counter()
    p = subprocess.run([EXE, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"weightsim {' '.join(args)} failed: {p.stderr[-2000:]}")
    return seconds


def stop(home: str) -> None:
    subprocess.run([EXE, "server", "stop"], env={**os.environ, "PREFECT_HOME": home}, capture_output=True)


def measure(rounds: int) -> dict:
    root = tempfile.mkdtemp(prefix="weightsim-first-minutes-")
    store, shared = os.path.join(root, "store"), os.path.join(root, "prefect")
    quick = ["run", "--config", "quick", "--store", store]
    analyze = ["analyze", "--sweep", "quick", "--store", store]
    out: dict = {"load_average": os.getloadavg()[0], "cores": os.cpu_count()}
    try:
        out["first_run_s"] = timed(quick, shared)
        samples: dict[str, list[float]] = {k: [] for k in ("analyze_reuse", "analyze_fresh", "run_reuse", "run_fresh")}
        for r in range(rounds):
            for name, args in (("analyze", analyze), ("run", quick)):
                fresh = os.path.join(root, f"fresh-{name}-{r}")
                try:
                    samples[f"{name}_fresh"].append(timed(args, fresh))
                finally:
                    stop(fresh)
                samples[f"{name}_reuse"].append(timed(args, shared))
        for k, v in samples.items():
            out[f"{k}_s"] = statistics.median(v)
        for name in ("analyze", "run"):
            out[f"{name}_fresh_over_reuse"] = out[f"{name}_fresh_s"] / out[f"{name}_reuse_s"]
    finally:
        stop(shared)
    out["load_average_after"] = os.getloadavg()[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    result = measure(args.rounds)
    emit(result, args.json)


if __name__ == "__main__":
    main()
