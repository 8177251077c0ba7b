"""Side-by-side performance measurements, written as JSON.

    python -m benchmarks.run [--quick] [--device cpu|cuda] --json FILE

Every ratio compares two implementations measured in this same run on this
same machine. Not measured yet: ``train.<arch>.speedup`` (the batched
multi-seed training engine of issue 6 is not built).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

from weightsim import chain, similarity, tables
from weightsim.archs import arch_spec, build_seeded


def _timed(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def digits_mlps(n: int) -> tuple[list[dict], object]:
    spec = arch_spec("mlp", (8, 8), 2)
    return [build_seeded(spec, i).state_dict() for i in range(n)], spec


def bench_features(n: int, n_loop: int, device: str) -> dict:
    """Chain features of n digits MLPs at once vs one network at a time."""
    sds, spec = digits_mlps(n)
    s = chain.stack(sds, spec, device)
    batched = _timed(lambda: chain.features_stack(s, spec))
    loop = _timed(lambda: [chain.features(sd, spec) for sd in sds[:n_loop]], repeat=1) * n / n_loop
    return {"nets_per_s": n / batched, "loop_nets_per_s": n / loop, "speedup": loop / batched, "n": n}


def bench_similarity(n: int, device: str, chunk: int = 1000) -> dict:
    """Full cosine similarity matrix of n digits-MLP solutions, from their weights."""
    sds, spec = digits_mlps(n)

    def run():
        feats = torch.cat([chain.features_stack(chain.stack(sds[i:i + chunk], spec, device), spec)
                           for i in range(0, n, chunk)])
        return similarity.cosine_matrix(feats)

    seconds = _timed(run, repeat=1)
    return {f"seconds_{n}": seconds, "n": n}


def bench_tables(n: int, n_scan: int) -> dict:
    """Weight-table write+read vs np.save/np.load of the same arrays, and one
    layer of n_scan runs by column projection vs loading torch.save checkpoints."""
    sds, spec = digits_mlps(max(n, n_scan))
    meta = {"seed": 0, "arch": "mlp", "spec": spec.to_dict(), "config": {"epochs": 1},
            "metrics": {"test_accuracy": 0.5}, "dataset": {"name": "bench", "fingerprint": "f"},
            "problem": {"name": "0v1", "classes": [0, 1]}}
    with tempfile.TemporaryDirectory() as root:
        def write_read_tables():
            uris = [tables.write(root, f"weights/dataset=bench/arch=mlp/problem=0v1/r{i}.parquet",
                                 {0: sds[i], 1: sds[i]}, {**meta, "run_id": f"r{i}"}) for i in range(n)]
            for u in uris:
                tables.read_run_epochs(u, [0, None])

        def write_read_npy():
            for i in range(n):
                path = os.path.join(root, f"npy{i}.npz")
                np.savez(path, **{f"{e}/{k}": v.numpy() for e in (0, 1) for k, v in sds[i].items()})
                with np.load(path) as z:
                    [z[k] for k in z.files]

        t_tables, t_npy = _timed(write_read_tables, 1), _timed(write_read_npy, 1)
        uris = [tables.write(root, f"weights/dataset=bench/arch=mlp/problem=0v1/s{i}.parquet", {0: sds[i], 1: sds[i]},
                             {**meta, "run_id": f"s{i}"}) for i in range(n_scan)]
        ckpts = []
        for i in range(n_scan):
            ckpts.append(os.path.join(root, f"ckpt{i}.pt"))
            torch.save({0: sds[i], 1: sds[i]}, ckpts[-1])
        t_scan = _timed(lambda: tables.scan_layer(root, "layers.1.weight", uris), 1)
        t_ckpt = _timed(lambda: [torch.load(p, weights_only=True)[1]["layers.1.weight"] for p in ckpts], 1)
    return {"ratio_vs_npy": t_npy / t_tables, "seconds_tables": t_tables, "seconds_npy": t_npy, "n": n,
            "layer_scan_speedup": t_ckpt / t_scan, "seconds_scan": t_scan, "seconds_checkpoints": t_ckpt,
            "n_scan": n_scan}


def bench_orchestration(n: int) -> dict:
    """Prefect task overhead on the embedded server: n no-op tasks in a flow."""
    from prefect import flow, task

    @task
    def noop(i: int) -> int:
        return i

    @flow
    def many(count: int) -> float:
        t0 = time.perf_counter()
        for i in range(count):
            noop(i)
        return time.perf_counter() - t0

    many(3)  # start the server and warm up
    return {"overhead_ms_per_task": 1000 * many(n) / n, "n": n}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run")
    p.add_argument("--quick", action="store_true", help="smaller sizes (≤ 3 minutes on a 2-core CPU)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    q = args.quick
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                           "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                           "date": time.strftime("%Y-%m-%d")},
               "features": bench_features(2000 if q else 5000, 100, args.device),
               "similarity": bench_similarity(5000, args.device),
               "tables": bench_tables(200 if q else 1000, 1000),
               "orchestration": bench_orchestration(100 if q else 500)}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return results


if __name__ == "__main__":
    main()
