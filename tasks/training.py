"""Training tasks: one task trains a seed-chunk of one (arch, problem)."""
from __future__ import annotations

import time
from contextlib import contextmanager

from prefect import get_run_logger, task
from prefect.concurrency.sync import concurrency
from prefect.tasks import exponential_backoff

from weightsim import loader
from weightsim.errors import StoreError, WeightsimError
from weightsim.store import open_store
from weightsim.placement import training_slots
from weightsim.sweep import engine_options, plan_sweep, train_missing


def transient(task, task_run, state) -> bool:
    """Retry storage and unexpected faults; never deterministic bad input or
    divergence (retrying those would only fail again)."""
    try:
        state.result()
    except StoreError as exc:
        return exc.transient
    except WeightsimError:
        return False
    except BaseException:  # noqa: BLE001 - e.g. OSError, CUDA errors
        return True
    return False


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5,
      retry_condition_fn=transient)
def train_chunk(options: dict, arch: str, problem: str, seeds: list[int], device: str) -> dict:
    """Train the runs of (arch, problem, seeds) missing from the store.

    The seeds train together through the batched engine (``options.engine``),
    each batch holding a slot of the global concurrency limit
    ``placement.training_slots`` names (by default ``weightsim-gpu`` on CUDA).
    Logs one line per run trained (test accuracy, final training loss,
    seconds). Returns ``{"uris": [...], "trained": n, "runs": [row, ...],
    "diverged": [record, ...]}`` (one row per run with a table for the
    sweep's runs table; the divergence records of runs that diverged); each weight table is
    written by the task itself, atomically, as soon as its batch ends, so a
    crash loses at most the batch in flight."""
    logger = get_run_logger()
    opts = loader.load(options)
    dataset, keys = plan_sweep(opts, [arch], [problem], seeds)
    rows = []

    def on_run(key, uri, trained, metrics):
        rows.append(run_row(key, uri, trained, metrics))
        if trained:
            logger.info("%s %s seed %d: test accuracy %.3f, final loss %.4f (%.1f s for the %d seed(s) trained together)",
                        key.arch, key.problem.name, key.seed, metrics["test_accuracy"], metrics["train_loss"],
                        metrics["train_seconds"], metrics.get("batch_seeds", 1))

    diverged = []

    def on_diverged(key, record):
        diverged.append(record)
        logger.warning("%s %s seed %d diverged (epoch %s, loss %s): recorded, not trained again; the analysis "
                       "runs on the other runs", key.arch, key.problem.name, key.seed, record.get("epoch"),
                       record.get("loss"))

    limit = training_slots(opts.slot_limit, device)
    uris = train_missing(open_store(opts.store), keys, dataset, device, on_run, engine_options(opts),
                         slot=(lambda: _slot(limit, logger)) if limit else None, on_diverged=on_diverged)
    trained = sum(r["trained_now"] for r in rows)
    if trained < len(rows):
        logger.info("%d of %d runs were already in the store", len(rows) - trained, len(rows))
    return {"uris": uris, "trained": trained, "runs": rows, "diverged": diverged}


def run_row(key, uri: str, trained: bool, metrics: dict) -> dict:
    """One run's row of the sweep's runs table (``publish_runs``)."""
    return {"run_id": key.run_id, "arch": key.arch, "problem": key.problem.name, "seed": key.seed,
            "test_accuracy": _rounded(metrics.get("test_accuracy"), 3),
            "train_loss": _rounded(metrics.get("train_loss"), 4), "trained_now": trained, "table": uri}


@contextmanager
def _slot(limit: str, logger):
    """One slot of the global concurrency limit ``limit`` while a batch
    trains (a limit the server lacks is skipped, with Prefect's warning).
    The taken/released lines bound the training in time."""
    asked = time.monotonic()
    with concurrency(limit, occupy=1, lease_duration=60):  # a dead holder's slot frees within a minute
        taken = time.monotonic()
        logger.info("slot of %s taken after %.1f s", limit, taken - asked)
        try:
            yield
        finally:
            logger.info("slot of %s released after %.1f s", limit, time.monotonic() - taken)


def _rounded(value, digits: int):
    return round(float(value), digits) if isinstance(value, (int, float)) else None
