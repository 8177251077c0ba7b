"""Training tasks: one task trains a seed-chunk of one (arch, problem)."""
from __future__ import annotations

from prefect import task
from prefect.tasks import exponential_backoff

from weightsim.config import Options
from weightsim.errors import StoreError, WeightsimError
from weightsim.store import open_store
from weightsim.sweep import train_missing


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

    The seeds train together through the batched engine (``options.engine``).
    Returns ``{"uris": [...], "trained": n}``; each weight table is written by
    the task itself, atomically, as soon as its batch ends, so a crash loses at
    most the batch in flight."""
    opts = Options(**options)
    dataset, keys = opts.plan([arch], [problem], seeds)
    trained = []
    uris = train_missing(open_store(opts.store), keys, dataset, device,
                         lambda key, uri, was_trained: trained.append(was_trained), opts.engine_options())
    return {"uris": uris, "trained": sum(trained)}
