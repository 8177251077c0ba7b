"""Side-by-side performance measurements, written as JSON.

    python -m benchmarks.run [--quick] [--device cpu|cuda] [--train-only ARCHS] --json FILE

Every ratio compares two implementations measured in this same run on this
same machine:

- ``train.<arch>``: the batched multi-seed engine vs the per-seed reference
  loop, per network, end to end (initialization, training, evaluation). On
  the CPU the workload is the built-in digits preset of each arch (batch 32);
  on CUDA the issue's reference networks on MNIST-shaped data (batch 128:
  MLP 784-512-512-10, CNN 32-64 on 28×28, RNN/GRU 128 units over 28 steps;
  the residual families at their ``-paper`` sizes: resmlp 256/512 × 4
  blocks, ResNet-20, a 4-block transformer of width 128 over 28 tokens).
- ``paper_scale``: 5,000 MLPs 3072-500-500-500 on 1,000-example binary
  problems for 50 epochs (the paper's config), measured on a slice of seeds
  and epochs and projected.
- ``features``, ``similarity``, ``tables``, ``orchestration``: see each
  function; ``analysis``: ``benchmarks/analysis.py``.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time

from collections.abc import Callable, Sequence

import numpy as np
import torch

from benchmarks import emit
from benchmarks.analysis import bench_analysis_120, bench_analysis_paper_size, bench_analysis_scale, growth
from weightsim import chain, packs, scan, similarity, tables
from weightsim.archs import ArchSpec, arch_spec, build_seeded, initial_state
from weightsim.chunks import chunked
from weightsim.datasets import load_dataset
from weightsim.engine import EngineOptions, max_seeds, train_batch
from weightsim.problems import Problem
from weightsim.runs import RunKey, TrainConfig
from weightsim.store import open_store, thread_map
from weightsim.training import train_run


def _timed(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls (seconds)."""
    return _interleaved([fn], repeat)[0]


def _interleaved(fns, repeat: int = 3) -> list[float]:
    """Best wall time of ``repeat`` calls of each function (seconds), the
    calls taken in turns so that all see the machine in the same state (disk
    writeback, caches, neighbours)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _train_keys(dataset: str, arch: str, spec: ArchSpec | None, config: TrainConfig, seeds: int,
                classes: tuple[int, ...]) -> tuple[object, list[RunKey]]:
    d = load_dataset(dataset)
    spec = spec or arch_spec(arch, d.shape, len(classes))
    return d, [RunKey(d.name, d.fingerprint, Problem(classes), arch, spec, s, config) for s in range(seeds)]


TRAIN_ARCHS = ("mlp", "cnn", "rnn", "gru", "resmlp", "resnet", "transformer")


def _workloads(device: str, epochs: int) -> dict[str, tuple[str, ArchSpec | None, TrainConfig, tuple[int, ...]]]:
    """arch → (dataset, spec or None for the preset, config, classes)."""
    if device == "cpu":
        from weightsim.sweep import default_config

        return {a: ("digits", None, default_config(a, epochs=epochs, checkpoints=()), (3, 8)) for a in TRAIN_ARCHS}
    data = "synthetic:classes=10,shape=28x28,train=2048,test=512,seed=0"
    cfg = TrainConfig(epochs=epochs, lr=0.05, batch_size=128, checkpoints=())
    clip = TrainConfig(epochs=epochs, lr=0.05, batch_size=128, checkpoints=(), grad_clip=1.0)
    ten = tuple(range(10))
    return {"mlp": (data, ArchSpec("mlp", (784,), (512, 512), 10), cfg, ten),
            "cnn": (data, ArchSpec("cnn", (1, 28, 28), (32, 64), 10), cfg, ten),
            "rnn": (data, ArchSpec("rnn", (28, 28), (128,), 10), clip, ten),
            "gru": (data, ArchSpec("gru", (28, 28), (128,), 10, activation="tanh"), clip, ten),
            "resmlp": (data, ArchSpec("resmlp", (784,), (256, 512), 10, blocks=4), cfg, ten),
            "resnet": (data, ArchSpec("resnet", (1, 28, 28), (16, 32, 64), 10, batchnorm=True, blocks=3), cfg, ten),
            "transformer": (data, ArchSpec("transformer", (28, 28), (128, 256), 10, blocks=4, heads=4), clip, ten)}


def _at_least(fn, seconds: float) -> tuple[Callable[[], None], int]:
    """``fn`` repeated as often as it takes to run ``seconds`` (from one
    timed call): (the repeated function, repetitions)."""
    t0 = time.perf_counter()
    fn()
    reps = max(1, math.ceil(seconds / max(time.perf_counter() - t0, 1e-9)))
    return (lambda: [fn() for _ in range(reps)]), reps


def bench_train(device: str, epochs: int, n_loop: int, max_k: int, archs=TRAIN_ARCHS,
                options: dict[str, EngineOptions] | None = None, min_seconds: float = 1.0,
                rounds: int = 3) -> dict:
    """Per network, end to end (initialization, training, evaluation): the
    per-seed loop vs the batched engine on K = min(largest K that fits,
    ``max_k``) seeds, same epochs. Each side runs at least ``min_seconds``
    per measurement (the loop on ``n_loop`` or more seeds, the engine's batch
    repeated); the sides are timed in turns, ``rounds`` times, best of each.
    ``options``: engine variants to time (name → EngineOptions)."""
    options = options or {"fp32": EngineOptions()}
    out = {}
    for arch in archs:
        dataset, spec, cfg, classes = _workloads(device, epochs)[arch]
        probe = _train_keys(dataset, arch, spec, cfg, 1, classes)[1][0]
        k = min(max_seeds(probe.spec, cfg.batch_size, device), max_k)
        d, keys = _train_keys(dataset, arch, spec, cfg, max(k, n_loop), classes)
        train_run(keys[0], d, device)  # warm-up (kernels, caches)
        _sync(device)
        t0 = time.perf_counter()
        train_run(keys[0], d, device)
        _sync(device)
        n = max(n_loop, math.ceil(min_seconds / (time.perf_counter() - t0)))
        d, keys = _train_keys(dataset, arch, spec, cfg, max(k, n), classes)

        def loop():
            [train_run(key, d, device) for key in keys[:n]]
            _sync(device)

        sides = [loop]
        reps = []
        for opt in options.values():
            train_batch(keys[:2], d, device, opt)  # warm-up
            fn, r = _at_least(lambda opt=opt: (train_batch(keys[:k], d, device, opt), _sync(device)), min_seconds)
            sides.append(fn)
            reps.append(r)
        times = _interleaved(sides, rounds)
        loop_t = times[0] / n
        steps = epochs * -(-len(keys[0].problem.select(d, "train")[1]) // cfg.batch_size)
        res = {"k": k, "epochs": epochs, "steps": steps, "loop_seeds": n, "loop_seconds_per_net": loop_t,
               "loop_ms_per_net_step": 1000 * loop_t / steps, "rounds": rounds}
        for (name, opt), t, r in zip(options.items(), times[1:], reps):
            batched = t / (r * k)
            acc = float(np.mean([x.metrics["test_accuracy"] for x in train_batch(keys[:n_loop], d, device, opt)]))
            res[name] = {"seconds_per_net": batched, "ms_per_net_step": 1000 * batched / steps, "repeats": r,
                         "speedup": loop_t / batched, "mean_test_accuracy_first_seeds": acc}
        res["speedup"] = max(v["speedup"] for v in res.values() if isinstance(v, dict))
        out[arch] = res
    return out


PAPER = {"seeds": 5000, "epochs": 50, "examples": 1000}


def bench_paper_scale(device: str, k: int, epochs: int, options: EngineOptions = EngineOptions()) -> dict:
    """5,000 MLPs 3072-500-500-500 on 1,000-example binary problems, 50
    epochs (lr 0.1, momentum 0.9, batch 128): train K seeds (``max_seeds``;
    on the CPU K = 1, which the sweep trains with the loop) for ``epochs``
    epochs as the sweep would, and the first (at most 4) with the per-seed
    loop, in turns, best of three; project both to the full solution set.
    The initialization (``archs.initial_state`` per seed, on the CPU, as the
    engine does it) is reported apart."""
    spec = ArchSpec("mlp", (3072,), (500, 500, 500), 2)
    cfg = TrainConfig(epochs=epochs, lr=0.1, batch_size=128, checkpoints=())
    k = min(k, max_seeds(spec, cfg.batch_size, device))
    d, keys = _train_keys(f"synthetic:classes=2,shape=3x32x32,train={PAPER['examples']},test=200,seed=0", "mlp",
                          spec, cfg, k, (0, 1))
    t_init = _timed(lambda: [initial_state(spec, i) for i in range(4)], 2) / 4  # as the engine initializes
    train_batch(keys[:2], d, device, options)  # warm-up
    _sync(device)
    n_loop = min(k, 4)  # the loop trains the same first seeds, in turns with the engine

    def loop():
        [train_run(key, d, device) for key in keys[:n_loop]]
        _sync(device)

    def batched():
        train_batch(keys, d, device, options)
        _sync(device)

    if k > 1:
        t, t_loop = _interleaved([batched, loop], 3)
        t_loop /= n_loop
    else:  # the sweep trains one seed at a time: the loop is what runs, and there is nothing to compare
        t = t_loop = _timed(loop, 3)
    n_params = sum(p.numel() for p in build_seeded(spec, 0).parameters())
    flop = 6 * n_params * PAPER["examples"] * PAPER["epochs"] * PAPER["seeds"]
    scale = PAPER["epochs"] / epochs * PAPER["seeds"]
    train_s, loop_s, init_s = (t / k - t_init) * scale, (t_loop - t_init) * scale, t_init * PAPER["seeds"]
    out = {"measured": {"seeds": k, "epochs": epochs, "seconds": t, "init_seconds_per_net": t_init},
           "projected_seconds": train_s + init_s, "projected_train_seconds": train_s,
           "projected_init_seconds": init_s, "total_flop": flop,
           "achieved_tflop_s": flop / train_s / 1e12, "precision": options.effective(torch.device(device))}
    if k > 1:  # engine and loop measured apart, in turns
        out["measured"]["loop_seconds_per_seed"] = t_loop
        out.update(projected_loop_seconds=loop_s + init_s, speedup=(loop_s + init_s) / (train_s + init_s))
    return out


def read_solution_set(store: str, uris: Sequence[str]) -> list:
    """Final and epoch-0 checkpoints of every table, verified, as the
    representations read them (``representations._read_epochs``)."""
    st = open_store(store)
    return thread_map(lambda u: tables.read_run_epochs(u, [None, 0], st), uris, st.read_workers(8))


def digits_mlps(n: int) -> tuple[list[dict], object]:
    spec = arch_spec("mlp", (8, 8), 2)
    return [build_seeded(spec, i).state_dict() for i in range(n)], spec


def bench_features(n: int, n_loop: int, device: str) -> dict:
    """Chain features of n digits MLPs at once vs one network at a time,
    both from state dicts (validation and stacking included on both sides)."""
    sds, spec = digits_mlps(n)
    batched, loop = _interleaved([lambda: (chain.features_stack(chain.stack(sds, spec, device), spec), _sync(device)),
                                  lambda: [chain.features(sd, spec) for sd in sds[:n_loop]]], 3)
    loop *= n / n_loop
    return {"nets_per_s": n / batched, "loop_nets_per_s": n / loop, "speedup": loop / batched, "n": n}


def bench_similarity(n: int, device: str, chunk: int = 1000) -> dict:
    """Full cosine similarity matrix of n digits-MLP solutions, from their weights."""
    sds, spec = digits_mlps(n)

    def run():
        feats = torch.cat([chain.features_stack(chain.stack(part, spec, device), spec) for part in chunked(sds, chunk)])
        return similarity.cosine_matrix(feats)

    seconds = _timed(run, repeat=1)
    return {f"seconds_{n}": seconds, "n": n}


def bench_tables(n: int, n_scan: int, spec: ArchSpec | None = None) -> dict:
    """Weight-table write+read vs np.savez/np.load of the same arrays (two
    checkpoints per run, each file new), best of five interleaved rounds:
    through the paths the pipeline takes (``tables.write_many`` as training
    writes a batch, ``read_solution_set`` as the representations read a
    solution set) and one table at a time (``tables.write``,
    ``tables.read_run_epochs``); the one-at-a-time path also against npz
    files written as durably as tables (temporary file, fsync, rename). And
    one layer (the output weights) of n_scan runs vs loading n_scan
    torch.save checkpoints: the headline reads the tables (column
    projection, row-group pruning); beside it, a pack of them
    (``weightsim.packs``), with the cost of building the pack. ``spec``: the
    network (default: the digits MLP preset)."""
    if spec is None:
        sds, spec = digits_mlps(max(n, n_scan))
    else:
        sds = [build_seeded(spec, i).state_dict() for i in range(max(n, n_scan))]
    meta = {"seed": 0, "arch": "mlp", "spec": spec.to_dict(), "config": {"epochs": 1},
            "metrics": {"test_accuracy": 0.5}, "dataset": {"name": "bench", "fingerprint": "f"},
            "problem": {"name": "0v1", "classes": [0, 1]}}
    rounds = iter(range(1 << 30))  # every round writes new files, as a sweep does
    with tempfile.TemporaryDirectory() as root:
        def runs(r):
            return ((f"weights/dataset=bench/arch=mlp/problem=0v1/r{r}_{i}.parquet", {0: sds[i], 1: sds[i]},
                     {**meta, "run_id": f"r{r}_{i}"}) for i in range(n))

        def pipeline_tables():
            read_solution_set(root, tables.write_many(root, runs(next(rounds))))

        def one_by_one_tables():
            for u in [tables.write(root, *run) for run in runs(next(rounds))]:
                tables.read_run_epochs(u, [0, None])

        def write_read_npy(durable: bool = False):
            r = next(rounds)
            for i in range(n):
                path = os.path.join(root, f"npy{r}_{i}.npz")
                with open(path + ".tmp" if durable else path, "wb") as f:
                    np.savez(f, **{f"{e}/{k}": v.numpy() for e in (0, 1) for k, v in sds[i].items()})
                    if durable:  # as a weight table is written: temporary file, fsync, rename
                        f.flush()
                        os.fsync(f.fileno())
                if durable:
                    os.replace(path + ".tmp", path)
                with np.load(path) as z:
                    [z[k] for k in z.files]

        t_npy, t_npy_durable, t_tables, t_one = _interleaved(
            [write_read_npy, lambda: write_read_npy(True), pipeline_tables, one_by_one_tables], 5)
        uris = [tables.write(root, f"weights/dataset=bench/arch=mlp/problem=0v1/s{i}.parquet", {0: sds[i], 1: sds[i]},
                             {**meta, "run_id": f"s{i}"}) for i in range(n_scan)]
        ckpts = []
        for i in range(n_scan):
            ckpts.append(os.path.join(root, f"ckpt{i}.pt"))
            torch.save({0: sds[i], 1: sds[i]}, ckpts[-1])
        t_ckpt, t_scan_tables = _interleaved(
            [lambda: [torch.load(p, weights_only=True)[1]["out.weight"] for p in ckpts],
             lambda: scan.scan_layer(root, "out.weight", uris)], 3)
        t_pack = _timed(lambda: packs.write_pack(root, uris), 1)
        t_scan = _timed(lambda: scan.scan_layer(root, "out.weight", uris), 3)
    mb = sum(t.numel() * t.element_size() for t in sds[0].values()) * 2 / 1e6
    return {"ratio_vs_npy": t_npy / t_tables, "seconds_tables": t_tables, "seconds_npy": t_npy, "n": n,
            "ratio_vs_npy_one_by_one": t_npy / t_one, "seconds_tables_one_by_one": t_one,
            "ratio_vs_durable_npy_one_by_one": t_npy_durable / t_one, "seconds_npy_durable": t_npy_durable,
            "layer_scan_speedup": t_ckpt / t_scan_tables, "seconds_scan": t_scan_tables,
            "seconds_checkpoints": t_ckpt, "pack_scan_speedup": t_ckpt / t_scan, "seconds_scan_pack": t_scan,
            "seconds_write_pack": t_pack, "pack_scan_speedup_with_build": t_ckpt / (t_pack + t_scan),
            "n_scan": n_scan,
            "network": "-".join(map(str, (*spec.input_shape, *spec.widths, spec.num_classes))), "mb_per_run": mb}


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
    p.add_argument("--train-only", metavar="ARCHS", help="only the training benchmark, of these archs (comma-separated)")
    args = p.parse_args(argv)
    q, dev = args.quick, args.device
    cuda = dev == "cuda"
    variants = ({"fp32_eager": EngineOptions(cuda_graph=False), "fp32": EngineOptions(),
                 "tf32": EngineOptions("tf32"), "bf16": EngineOptions("bf16")} if cuda else {"fp32": EngineOptions()})
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                           "device": torch.cuda.get_device_name() if cuda else "cpu",
                           "date": time.strftime("%Y-%m-%d"), "quick": q},
               "train": bench_train(dev, 2 if q else 5, 3 if cuda else 4, (512 if cuda else 128) * (1 if q else 2),
                                    archs=tuple(args.train_only.split(",")) if args.train_only else TRAIN_ARCHS,
                                    options=variants)}
    if args.train_only:
        return emit(results, args.json, indent=2)
    results.update({
               "paper_scale": bench_paper_scale(dev, (512 if cuda else 8) * (1 if q else 2), 2,
                                                EngineOptions("tf32" if cuda else "fp32")),
               "features": bench_features(2000 if q else 5000, 100, dev),
               "similarity": bench_similarity(5000, dev),
               "tables": bench_tables(200 if q else 1000, 1000),
               "tables_784_512_512_10": bench_tables(20 if q else 100, 100 if q else 300,
                                                     ArchSpec("mlp", (784,), (512, 512), 10)),
               "orchestration": bench_orchestration(100 if q else 500),
               "analysis": bench_analysis_120()})
    if not q:
        scale = bench_analysis_scale()
        results["analysis"].update(scale=scale, scale_exponent=growth(scale),
                                   paper_size=bench_analysis_paper_size())
    return emit(results, args.json, indent=2)


if __name__ == "__main__":
    main()
