"""Train a sweep: fan out over arch × problem × seed-chunk."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

from prefect import flow, get_run_logger
from prefect.futures import as_completed

from tasks.artifacts import publish_runs, start_progress, update_progress
from tasks.training import run_row, train_chunk
from weightsim import catalog, loader
from weightsim.chunks import chunked
from weightsim.errors import WeightsimError
from weightsim.extras import require
from weightsim.placement import DEVICE_ENV, WORKER_ENV, resolved_device
from weightsim.store import Store, open_store, thread_map
from weightsim.divergence import divergence_of
from weightsim.sweep import done_meta, plan_sweep

from .fanout import fan_out, pool_of
from .naming import run_label
from .progress import show


def task_runner(runner: str):
    """``local`` (this process, one task at a time: each training task already
    uses every core through torch's own threads, and concurrent training
    threads only fight over them — 480 digits runs took 114 s with Prefect's
    default thread pool, 78 s one at a time; also the sweep's own tasks under
    ``pool:NAME``, whose chunks run on the pool's workers), ``dask`` (a
    local Dask cluster: one worker per GPU on a host with several, else two)
    or a Dask scheduler address (``tcp://host:8786``) to spread a sweep over
    machines."""
    if runner == "local" or pool_of(runner):
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)
    DaskTaskRunner = require("prefect_dask", "dask", f"--runner {runner}").DaskTaskRunner

    if runner == "dask":
        import torch

        if torch.cuda.device_count() > 1:
            return DaskTaskRunner(cluster_class=gpu_cluster, cluster_kwargs={"gpus": torch.cuda.device_count()})
        return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    if runner.startswith(("tcp://", "tls://")):
        return DaskTaskRunner(address=runner)
    raise WeightsimError(f"unknown runner {runner!r}: use local, dask or a Dask scheduler address tcp://host:port")


def gpu_cluster(gpus: int, asynchronous: bool = False):
    """A local Dask cluster of one single-threaded worker per GPU, each
    seeing only its GPU (``CUDA_VISIBLE_DEVICES``), named ``dask-gpu<i>``
    and holding one ``GPU`` resource, as ``weightsim worker`` starts Prefect
    workers."""
    distributed = require("distributed", "dask", "--runner dask")
    Nanny, Scheduler, SpecCluster = distributed.Nanny, distributed.Scheduler, distributed.SpecCluster

    workers = {f"gpu{i}": {"cls": Nanny, "options": {
        "nthreads": 1, "resources": {"GPU": 1},
        "env": {"CUDA_VISIBLE_DEVICES": str(i), DEVICE_ENV: str(i), WORKER_ENV: f"dask-gpu{i}"}}}
        for i in range(gpus)}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
                       asynchronous=asynchronous)


def _gpu_annotation(device: str, runner: str):
    """On a Dask cluster, a CUDA training task asks for one 'GPU' resource, so
    workers started with ``--resources GPU=1`` each train one chunk at a time."""
    if device == "cuda" and runner != "local":
        return require("dask", "dask", f"--runner {runner}").annotate(resources={"GPU": 1})
    return nullcontext()


@flow(name="train-sweep", flow_run_name=lambda: f"train-{run_label()}", task_runner=task_runner("local"))
def train_sweep(options: dict, runner: str | None = None, seed_chunk: int | None = None,
                adaptations: list[str] | None = None) -> dict:
    """Train every run of the sweep (``options``: the fields of
    ``weightsim.config.Options``; ``runner`` and ``seed_chunk`` override
    theirs) that the store does not hold yet; the sweep is recorded first,
    with ``adaptations`` (how its template was fitted to the dataset).
    Returns ``{"runs": {arch: [weight-table URIs]}, "trained": n, "sweep": name}``."""
    opts = loader.load(options)
    runner, seed_chunk = runner or opts.runner, seed_chunk or opts.seed_chunk
    data, keys = plan_sweep(opts)
    opts = catalog.named(opts, data.fingerprint)
    logger = get_run_logger()
    logger.info("sweep %s recorded at %s", opts.sweep,
                catalog.save(opts.store, opts.sweep, opts.to_dict(), data, keys, adaptations or ()))
    problems_ = list(dict.fromkeys(k.problem.name for k in keys))
    seed_chunks = chunked(list(range(opts.seeds)), max(1, seed_chunk))
    chunks = [(f"train-{arch}-{data.name}-{problem}-seeds{c[0]}-{c[-1]}", arch, problem, c)
              for arch in opts.archs for problem in problems_ for c in seed_chunks]
    progress = start_progress("training", data.name, opts.sweep, len(keys))
    show("training", 0, len(keys), "runs")
    uris: dict[str, list[str]] = {a: [] for a in opts.archs}
    rows: list[dict] = []
    diverged: list[dict] = []

    def arrived(result: dict, where: str = "") -> None:
        for row in result["runs"]:
            uris[row["arch"]].append(row["table"])
        rows.extend(result["runs"])
        diverged.extend(result.get("diverged", ()))
        done, trained = len(rows) + len(diverged), sum(r["trained_now"] for r in rows)
        update_progress(progress, "training", data.name, opts.sweep, done, len(keys), "runs",
                        f"{trained} trained now, {len(rows) - trained} already in the store, {len(diverged)} "
                        f"diverged{where}")
        show("training", done, len(keys), "runs")

    pool = pool_of(runner)
    tags = [f"dataset:{data.name}", f"sweep:{opts.sweep}"]
    store = open_store(opts.store)
    todo, found = _held(store, keys, chunks, arrived)
    if pool:
        def completed(name: str, worker: str | None) -> None:
            rows = found(name)
            if rows is None:
                raise WeightsimError(f"training chunk {name} completed without all its weight tables")
            arrived({"runs": rows}, f" (chunk {name} on worker {worker})")

        fan_out(pool, {**opts.to_dict(), "store": store.uri}, todo, tags, completed)  # a local store: absolute path
    elif todo:
        device, futures = resolved_device(opts.device), []
        for name, arch, problem, chunk in todo:
            with _gpu_annotation(device, runner):
                futures.append(train_chunk.with_options(task_run_name=name, tags=[f"dataset:{data.name}",
                                                                                  f"arch:{arch}"]
                                                        ).submit(opts.to_dict(), arch, problem, chunk, device))
        for fut in as_completed(futures):
            arrived(fut.result())
    trained = sum(r["trained_now"] for r in rows)
    logger.info("%d runs of %s: %d trained, %d already in %s, %d diverged", len(keys), data.name, trained,
                len(rows) - trained, opts.store, len(diverged))
    publish_runs(data.name, opts.sweep, sorted(rows, key=lambda r: (r["arch"], r["problem"], r["seed"])))
    return {"runs": {a: sorted(u) for a, u in uris.items()}, "trained": trained, "sweep": opts.sweep}


def _held(store: Store, keys: list, chunks: list, arrived) -> tuple[list, Callable[[str], list[dict] | None]]:
    """(the chunks holding runs the store lacks, the rows of a chunk by
    name): ``arrived`` gets the rows of every chunk the store already holds
    whole, read from its tables' footers, so a sweep with nothing new starts
    no task and no flow run; ``found(name)`` is None while a table of the
    chunk is missing or not bound to its run."""
    held = set(store.glob(f"weights/dataset={keys[0].dataset}/**/*.parquet"))  # one listing, not a read per run
    key_of = {(k.arch, k.problem.name, k.seed): k for k in keys}
    by_chunk = {name: [key_of[arch, problem, seed] for seed in seeds] for name, arch, problem, seeds in chunks}

    def found(name: str) -> list[dict] | None:
        """The chunk's rows (none for a run recorded as diverged), None if a
        table is missing or not bound to its run."""
        out = []
        for key in by_chunk[name]:
            meta = done_meta(store, key)
            if meta is None and divergence_of(store, key.key) is not None:
                continue
            if meta is None:
                return None
            out.append(run_row(key, store.key_uri(key.key), key.key not in held, meta.get("metrics") or {}))
        return out

    whole = [name for name, *_ in chunks if all(k.key in held for k in by_chunk[name])]
    rows = dict(zip(whole, thread_map(found, whole, store.read_workers())))  # footers: latency-bound on S3
    todo = []
    for chunk in chunks:
        if rows.get(chunk[0]) is None:
            todo.append(chunk)
        else:
            arrived({"runs": rows[chunk[0]]})
    return todo, found
