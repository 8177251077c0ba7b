"""A sweep's training chunks placed by Prefect on the workers of a work pool
(``--runner pool:NAME``).

Each chunk (arch × problem × seed-chunk) becomes a flow run of the
deployment ``train-chunk/<pool>``, which the sweep creates or updates on the
pool with no pull step and a module-path entrypoint: a worker runs the
``flows`` package installed where it runs, never a copy of the deployer's
folder. Every worker of the pool (``weightsim worker``: one per GPU, each
taking one run at a time) takes the next scheduled chunk when it is free, so
one sweep uses every device of every worker machine.

Flow runs of a deployment rather than Prefect task workers: a work pool's
workers each own a device and a limit of one run, the pool's job template
carries their environment (and on Docker or Kubernetes the GPU request), each
chunk is a run of its own in the UI with its logs, and a chunk whose worker
died can be set back to Scheduled for another worker. A background task run
of a dead task worker stays Running, and no other worker takes it.

The sweep waits for its chunks with one query per poll for all of them; a
chunk that failed for good (its own retries spent) fails the sweep. A chunk
whose worker stopped sending heartbeats (killed, machine gone), that
crashed, or that no worker started is scheduled again, at most ``ATTEMPTS``
times; runs it wrote stay in the store and are not trained again.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks.training import train_chunk
from weightsim import loader
from weightsim.chunks import chunked
from weightsim.errors import WeightsimError
from weightsim.placement import placement, resolved_device

from .logs import one_line_errors

CHUNK_FLOW = "train-chunk"
ENTRYPOINT = "flows.fanout.train_chunk_run"  # a module path: imported from the installed package, no pull step
TAG = "weightsim"  # the tag of flows.setup's crash automation
ATTEMPTS = 3  # placements of one chunk: the first, and again after its worker died (twice)
POLL_S = 2.0
SILENT_BEATS = 3  # a worker silent for this many of its heartbeat intervals (plus GRACE_S) is dead
GRACE_S = 15.0
PENDING_S = 600.0  # a chunk handed to a worker that never started it is scheduled again
# what a chunk run needs in its environment, whatever the worker's: a heartbeat for the crash automation, and
# transient server errors retried (a 500 on one request must not fail a chunk)
CHUNK_ENV = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30", "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500,504"}


def pool_of(runner: str) -> str | None:
    """The work pool a ``pool:NAME`` runner names (None for other runners)."""
    return runner.removeprefix("pool:") if runner.startswith("pool:") else None


# a hung S3 read or CUDA call fails the chunk run (its process's main thread is interrupted; a task's timeout
# on a worker thread could not) and the sweep schedules it again, instead of heartbeating forever
CHUNK_TIMEOUT_S = 6 * 3600


@flow(name=CHUNK_FLOW, timeout_seconds=CHUNK_TIMEOUT_S)
def train_chunk_run(options: dict, arch: str, problem: str, seeds: list[int]) -> dict:
    """Train one chunk of a sweep on this worker's device.

    Args:
        options: the sweep's options (the fields of ``weightsim.config.Options``).
        arch: the arch of the chunk, e.g. ``mlp``.
        problem: the problem of the chunk, e.g. ``3v8``.
        seeds: the seeds of the chunk.

    Logs and tags (``worker:<name>``) the worker, host and device it runs on;
    returns ``{"trained", "worker", "host", "device_index"}``."""
    one_line_errors()
    device = resolved_device(loader.load(options).device)
    where = placement(device)
    get_run_logger().info("%s on worker %s, host %s, device %s", flow_run.name, where["worker"], where["host"],
                          where["device_index"])
    _tag_worker(where["worker"])
    result = train_chunk(options, arch, problem, seeds, device)
    return {"trained": result["trained"], **where}


def _tag_worker(worker: str) -> None:
    """This flow run tagged ``worker:<worker>`` (a rerun elsewhere replaces the tag)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
        client.update_flow_run(run.id, tags=[t for t in run.tags if not t.startswith("worker:")] + [f"worker:{worker}"])


def deploy_chunks(pool: str) -> str:
    """Create or update the deployment ``train-chunk/<pool>`` on the work
    pool ``pool`` (which must exist); returns its name."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.callables import parameter_schema

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise WeightsimError(f"the Prefect server has no work pool {pool!r}: start its workers with "
                                 f"'weightsim worker --pool {pool}' first") from None
        client.create_deployment(
            flow_id=client.create_flow_from_name(CHUNK_FLOW), name=pool, work_pool_name=pool, entrypoint=ENTRYPOINT,
            pull_steps=[], tags=[TAG, CHUNK_FLOW], job_variables={"env": CHUNK_ENV},
            parameter_openapi_schema=parameter_schema(train_chunk_run).model_dump_for_openapi(),
            description="One training chunk (arch × problem × seed-chunk) of a sweep started with --runner pool:"
                        f"{pool}, on one device of a worker of the pool.")
    return f"{CHUNK_FLOW}/{pool}"


def fan_out(pool: str, options: dict, chunks: Sequence[tuple[str, str, str, list[int]]], tags: Sequence[str],
            on_done: Callable[[str, str | None], None]) -> None:
    """Run ``chunks`` (name, arch, problem, seeds) as flow runs of
    ``train-chunk/<pool>`` named after them and tagged ``tags``; calls
    ``on_done(name, worker)`` as each completes and returns when all have.
    A ``WeightsimError`` names the first chunk that failed for good."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Scheduled

    if not chunks:
        return
    deployment = deploy_chunks(pool)
    parent = flow_run.id or "none"
    pending = {}  # flow run id → chunk name
    for name, arch, problem, seeds in chunks:
        run = run_deployment(deployment, parameters={"options": options, "arch": arch, "problem": problem,
                                                     "seeds": seeds},
                             flow_run_name=name, tags=[*tags, f"arch:{arch}"], timeout=0,
                             idempotency_key=f"{parent}/{name}")  # a retried request creates no second run
        pending[run.id] = name
    attempts = dict.fromkeys(pending, 1)
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        while pending:
            time.sleep(POLL_S)
            dead = _dead_workers(client, pool)
            for run in _read(client, list(pending)):
                name, state = pending[run.id], run.state
                if state.is_completed():
                    del pending[run.id]
                    on_done(name, _worker_of(run))
                elif state.is_failed() or state.is_cancelled() or state.is_cancelling():
                    raise WeightsimError(f"training chunk {name} {state.name.lower()}: {state.message}")
                elif _lost(run, dead):
                    if attempts[run.id] >= ATTEMPTS:
                        raise WeightsimError(f"training chunk {name} was lost {ATTEMPTS} times (its worker died or "
                                             f"never started it): {state.message}")
                    attempts[run.id] += 1
                    logger.warning("%s: %s on worker %s; scheduled again (attempt %d of %d)", name, state.name,
                                   _worker_of(run) or "unknown", attempts[run.id], ATTEMPTS)
                    client.update_flow_run(run.id, tags=[t for t in run.tags if not t.startswith("worker:")])
                    client.set_flow_run_state(run.id, Scheduled(), force=True)


def _read(client, ids: list) -> list:
    """The flow runs ``ids``, page by page (the API returns at most 200 at a time)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    out = []
    for page in chunked(ids, 200):
        out += client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page)), limit=200)
    return out


def _worker_of(run) -> str | None:
    return next((t.removeprefix("worker:") for t in run.tags if t.startswith("worker:")), None)


def _dead_workers(client, pool: str) -> set[str]:
    """Workers of ``pool`` silent for ``SILENT_BEATS`` heartbeats (plus ``GRACE_S``)."""
    now = datetime.now(timezone.utc)
    return {w.name for w in client.read_workers_for_work_pool(pool) if w.last_heartbeat_time is not None
            and (now - w.last_heartbeat_time).total_seconds()
            > SILENT_BEATS * (w.heartbeat_interval_seconds or 30) + GRACE_S}


def _lost(run, dead: set[str]) -> bool:
    """A chunk no worker will finish: crashed, running on a dead worker, or
    handed to a worker that has not started it for ``PENDING_S``."""
    state = run.state
    if state.is_crashed():
        return True
    if state.is_running():
        return _worker_of(run) in dead
    if state.is_pending():
        return (datetime.now(timezone.utc) - state.timestamp).total_seconds() > PENDING_S
    return False
