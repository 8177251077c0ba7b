"""Where a run was trained: the worker, host and device index recorded in
every weight table's metrics.

``weightsim worker`` starts one Prefect worker per device and gives each the
environment below: ``WEIGHTSIM_WORKER`` (its name) and
``WEIGHTSIM_DEVICE_INDEX`` (the GPU it owns, as the host numbers it, or
``cpu``), with ``CUDA_VISIBLE_DEVICES`` set to that GPU alone, so the
training sees one GPU, ``cuda:0``, and sizes its seed batches from that GPU's
memory. Outside such a worker the run was trained in the command's own
process: worker ``local``.
"""
from __future__ import annotations

import os
import socket

WORKER_ENV = "WEIGHTSIM_WORKER"
DEVICE_ENV = "WEIGHTSIM_DEVICE_INDEX"


def worker_name() -> str:
    """The name of the worker this process runs under (``local`` outside one)."""
    return os.environ.get(WORKER_ENV) or "local"


def device_index(device: str) -> str:
    """The device a training on ``device`` (``cpu``/``cuda``/``cuda:i``) uses,
    as the host numbers it: ``cpu``, or the GPU's index before
    ``CUDA_VISIBLE_DEVICES`` renumbered it."""
    if not device.startswith("cuda"):
        return "cpu"
    owned = os.environ.get(DEVICE_ENV)
    if owned:
        return owned
    local = int(device.partition(":")[2] or 0)
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[local] if local < len(visible) else str(local)


def placement(device: str) -> dict[str, str]:
    """``{"worker", "host", "device_index"}`` of a training on ``device`` here."""
    return {"worker": worker_name(), "host": socket.gethostname(), "device_index": device_index(device)}
