"""Where a run trains (the device an option names, the slot it holds) and
where it was trained: the worker, host and device index recorded in
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

from .config import check_limit_name
from .errors import WeightsimError

WORKER_ENV = "WEIGHTSIM_WORKER"
DEVICE_ENV = "WEIGHTSIM_DEVICE_INDEX"
GPU_SLOTS = "weightsim-gpu"  # the Prefect global concurrency limit CUDA trainings take a slot of by default


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


def resolved_device(device: str) -> str:
    """The device an option names here: ``cpu`` or ``cuda`` (``auto``: CUDA
    when there is a GPU); ``cuda`` without one is a ``WeightsimError``."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise WeightsimError("--device cuda: no CUDA device is available here")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def training_slots(slot_limit: str, device: str) -> str | None:
    """The Prefect global concurrency limit every training batch holds one
    slot of while it trains: ``slot_limit``, else ``$WEIGHTSIM_SLOT_LIMIT``
    (set per GPU machine or work pool), else ``weightsim-gpu`` on CUDA and
    none on the CPU; ``none`` turns it off. A worker that owns its GPU
    (``weightsim worker``: one run at a time) needs none by default."""
    owned = device == "cuda" and os.environ.get(DEVICE_ENV)
    name = slot_limit or os.environ.get("WEIGHTSIM_SLOT_LIMIT") or (GPU_SLOTS if device == "cuda" and not owned
                                                                     else "")
    return None if name in ("", "none") else check_limit_name(name, "the slot limit")
