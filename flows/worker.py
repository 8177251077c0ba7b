"""``weightsim worker``: one Prefect process worker per device of this
machine, each owning its device.

A GPU worker sees only its GPU (``CUDA_VISIBLE_DEVICES``), so every training
it runs uses that GPU as ``cuda:0`` and sizes its seed batches from that
GPU's memory; it takes one flow run at a time (``--limit 1``), so a GPU is
never shared. Each worker's environment names it and its device
(``weightsim.placement``), which every weight table it writes records.
Workers heartbeat every ``HEARTBEAT_S`` seconds, so a sweep fanned out with
``--runner pool:NAME`` notices a dead one within a minute. SIGTERM or SIGINT
stops them all: a worker still running after ``STOP_S`` seconds is killed
with what it runs (a chunk cut short this way is scheduled again by its
sweep)."""
from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from weightsim.errors import WeightsimError
from weightsim.placement import DEVICE_ENV, WORKER_ENV, device_index

from .logs import one_line_errors

HEARTBEAT_S = 10
STOP_S = 10.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a worker process, before exec: SIGTERM when ``weightsim worker`` dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: workers still stop with weightsim worker's SIGTERM handling
        pass


def devices(gpus: str | None, cpus: int | None) -> list[str]:
    """The devices to start workers for: GPU indices as this host numbers
    them (``--gpus all`` or ``0,2``), or ``cpu0``… (``--cpus N``); without
    either, every GPU visible here, else one CPU worker."""
    if cpus is not None:
        if not 1 <= cpus <= 1024:
            raise WeightsimError(f"--cpus must be between 1 and 1024 (got {cpus})")
        return [f"cpu{i}" for i in range(cpus)]
    import torch

    visible = torch.cuda.device_count()
    if gpus is None:
        return [device_index(f"cuda:{i}") for i in range(visible)] or ["cpu0"]
    if not visible:
        raise WeightsimError(f"--gpus {gpus}: no GPU is visible here (use --cpus N for CPU workers)")
    if gpus == "all":
        return [device_index(f"cuda:{i}") for i in range(visible)]
    try:
        wanted = [int(g) for g in gpus.split(",")]
    except ValueError:
        raise WeightsimError(f"--gpus must be all or GPU indices like 0,2 (got {gpus!r})") from None
    if len(set(wanted)) != len(wanted) or not all(0 <= g < visible for g in wanted):
        raise WeightsimError(f"--gpus {gpus}: this host has GPUs 0 to {visible - 1}, each named once")
    return [device_index(f"cuda:{g}") for g in wanted]


def worker_env(name: str, device: str, workers: int) -> dict[str, str]:
    """The environment of the worker ``name`` owning ``device``."""
    env = {**os.environ, WORKER_ENV: name, DEVICE_ENV: "cpu" if device.startswith("cpu") else device,
           "CUDA_VISIBLE_DEVICES": "" if device.startswith("cpu") else device}
    env.setdefault("PREFECT_WORKER_HEARTBEAT_SECONDS", str(HEARTBEAT_S))
    env.setdefault("PREFECT_CLIENT_RETRY_EXTRA_CODES", "500,504")  # a transient server error is retried
    if device.startswith("cpu"):  # CPU workers share the cores
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    return env


def run_workers(pool: str, devices_: list[str], prefix: str | None = None) -> int:
    """Start one worker per device on ``pool`` (created if missing) and
    supervise them until SIGTERM/SIGINT (exit code 0) or until one exits
    (its code)."""
    one_line_errors()
    if not os.environ.get("PREFECT_API_URL"):
        raise WeightsimError("a worker takes runs from a Prefect server: set PREFECT_API_URL to its API, e.g. "
                             "http://prefect-host:4200/api")
    import httpx
    from prefect.client.orchestration import get_client

    from .setup import ensure_pool

    async def pool_line() -> str:
        async with get_client() as client:
            return await ensure_pool(client, pool)

    try:
        print(asyncio.run(pool_line()), flush=True)
    except (httpx.HTTPError, OSError) as exc:
        raise WeightsimError(f"the Prefect server at {os.environ['PREFECT_API_URL']} did not answer: {exc}") from None
    prefix = prefix or socket.gethostname()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    procs = {}
    for device in devices_:
        name = f"{prefix}-{device if device.startswith('cpu') else 'gpu' + device}"
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process", "--limit", "1",
             "--name", name], env=worker_env(name, device, len(devices_)), start_new_session=True,
            preexec_fn=_die_with_parent)
        print(f"worker {name}: device {device} (pid {procs[name].pid})", flush=True)
    code = 0
    while not stop.wait(1):
        ended = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
        if ended:
            code = next(iter(ended.values())) or 1
            print(f"weightsim: worker {', '.join(ended)} exited; stopping the others", file=sys.stderr)
            break
    _stop(list(procs.values()))
    return code


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to every worker's process group, SIGKILL to those still
    running ``STOP_S`` seconds later."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(p, signal.SIGKILL)  # also what the worker started, if the worker is gone
        p.wait()


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
