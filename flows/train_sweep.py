"""Train a sweep: fan out over arch × problem × seed-chunk."""
from __future__ import annotations

from contextlib import nullcontext

from prefect import flow, get_run_logger
from prefect.futures import as_completed

from tasks.artifacts import publish_runs, start_progress, update_progress
from tasks.training import train_chunk
from weightsim import catalog
from weightsim.config import Options
from weightsim.errors import WeightsimError

from .naming import run_label


def seed_chunks(seeds: int, size: int) -> list[list[int]]:
    return [list(range(lo, min(lo + size, seeds))) for lo in range(0, seeds, size)]


def task_runner(runner: str):
    """``local`` (this process, one task at a time: each training task already
    uses every core through torch's own threads, and concurrent training
    threads only fight over them — 480 digits runs took 114 s with Prefect's
    default thread pool, 78 s one at a time), ``dask`` (a local Dask cluster)
    or a Dask scheduler address (``tcp://host:8786``) to spread a sweep over
    machines."""
    if runner == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if runner == "dask":
        return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    if runner.startswith(("tcp://", "tls://")):
        return DaskTaskRunner(address=runner)
    raise WeightsimError(f"unknown runner {runner!r}: use local, dask or a Dask scheduler address tcp://host:port")


def _gpu_annotation(device: str, runner: str):
    """On a Dask cluster, a CUDA training task asks for one 'GPU' resource, so
    workers started with ``--resources GPU=1`` each train one chunk at a time."""
    if device == "cuda" and runner != "local":
        import dask

        return dask.annotate(resources={"GPU": 1})
    return nullcontext()


@flow(name="train-sweep", flow_run_name=lambda: f"train-{run_label()}", task_runner=task_runner("local"))
def train_sweep(options: dict, runner: str | None = None, seed_chunk: int | None = None,
                adaptations: list[str] | None = None) -> dict:
    """Train every run of the sweep (``options``: the fields of
    ``weightsim.config.Options``; ``runner`` and ``seed_chunk`` override
    theirs) that the store does not hold yet; the sweep is recorded first,
    with ``adaptations`` (how its template was fitted to the dataset).
    Returns ``{"runs": {arch: [weight-table URIs]}, "trained": n, "sweep": name}``."""
    opts = Options(**options)
    runner, seed_chunk = runner or opts.runner, seed_chunk or opts.seed_chunk
    data, keys = opts.plan()
    opts = opts.named(data.fingerprint)
    device = opts.resolved_device()
    logger = get_run_logger()
    logger.info("sweep %s recorded at %s", opts.sweep,
                catalog.save(opts.store, opts.sweep, opts.to_dict(), data, keys, adaptations or ()))
    problems_ = list(dict.fromkeys(k.problem.name for k in keys))
    progress = start_progress("training", data.name, opts.sweep, len(keys))
    futures = {}
    for arch in opts.archs:
        for problem in problems_:
            for chunk in seed_chunks(opts.seeds, max(1, seed_chunk)):
                name = f"train-{arch}-{data.name}-{problem}-seeds{chunk[0]}-{chunk[-1]}"
                with _gpu_annotation(device, runner):
                    fut = train_chunk.with_options(task_run_name=name, tags=[f"dataset:{data.name}", f"arch:{arch}"]
                                                   ).submit(opts.to_dict(), arch, problem, chunk, device)
                futures[fut] = arch
    uris: dict[str, list[str]] = {a: [] for a in opts.archs}
    rows: list[dict] = []
    done = trained = diverged = 0
    for fut in as_completed(list(futures)):
        result = fut.result()
        uris[futures[fut]].extend(result["uris"])
        rows.extend(result["runs"])
        diverged += len(result["diverged"])
        done += len(result["uris"]) + len(result["diverged"])
        trained += result["trained"]
        update_progress(progress, "training", data.name, opts.sweep, done, len(keys), "runs",
                        f"{trained} trained now, {done - trained} already in the store")
    logger.info("%d runs of %s: %d trained, %d already in %s, %d diverged", len(keys), data.name, trained,
                len(keys) - trained - diverged, opts.store, diverged)
    publish_runs(data.name, opts.sweep, sorted(rows, key=lambda r: (r["arch"], r["problem"], r["seed"])))
    return {"runs": {a: sorted(u) for a, u in uris.items()}, "trained": trained, "sweep": opts.sweep}
