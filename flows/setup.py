"""What a Prefect server needs for weightsim besides the deployments of
``deployments/prefect.yaml`` (``weightsim setup``), created or brought up to
date, so running it again is harmless:

- the process work pool the CPU deployments use;
- the global concurrency limit CUDA trainings take a slot of (``weightsim-gpu``,
  one slot per GPU by default);
- an automation that marks a weightsim flow run ``Crashed`` once its
  heartbeats stop (its worker or machine died), so it can be retried with
  ``prefect flow-run retry``. The deployments send a heartbeat every 30 s
  (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in prefect.yaml)."""
from __future__ import annotations

import asyncio
from datetime import timedelta

from weightsim.config import check_limit_name
from weightsim.placement import GPU_SLOTS
from weightsim.errors import WeightsimError

CRASH_AUTOMATION = "weightsim: crash unresponsive flow runs"
HEARTBEAT_S = 30  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY of the deployments in prefect.yaml
POOL = "weightsim-cpu"  # the work pool of the CPU deployments in prefect.yaml
UNRESPONSIVE_AFTER = 3 * HEARTBEAT_S
TAG = "weightsim"  # every deployment of prefect.yaml carries it; the automation watches only these runs


def crash_automation(unresponsive_after: float):
    """The automation: a flow run tagged ``weightsim`` whose heartbeat is
    followed by nothing (no heartbeat, no final state) for
    ``unresponsive_after`` seconds becomes ``Crashed``."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=CRASH_AUTOMATION,
        description=f"A weightsim flow run whose heartbeats stopped for {unresponsive_after:g} s lost its "
                    "worker or machine: mark it Crashed (retry it with `prefect flow-run retry`).",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{TAG}"},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=unresponsive_after)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=(
            f"no heartbeat for {unresponsive_after:g} s: the worker or its machine is gone "
            "(retry with `prefect flow-run retry`; runs already in the store are not trained again)"))])


def setup(pool: str = POOL, gpu_limit: str = GPU_SLOTS, gpu_slots: int = 1,
          unresponsive_after: float = UNRESPONSIVE_AFTER) -> list[str]:
    """Create or update the work pool ``pool`` (process), the global
    concurrency limit ``gpu_limit`` with ``gpu_slots`` slots and the crash
    automation on the server at PREFECT_API_URL; one line per object."""
    check_limit_name(gpu_limit, "--gpu-limit")
    if not 1 <= gpu_slots <= 10_000:
        raise WeightsimError(f"--gpu-slots must be between 1 and 10,000 (got {gpu_slots})")
    if not 2 * HEARTBEAT_S <= unresponsive_after <= 86_400:
        raise WeightsimError(f"--unresponsive-after must be between {2 * HEARTBEAT_S} s (two heartbeats) and "
                             f"86400 s (got {unresponsive_after:g})")
    return asyncio.run(_setup(pool, gpu_limit, gpu_slots, unresponsive_after))


async def ensure_pool(client, pool: str) -> str:
    """The process work pool ``pool``, created if missing (a pool created
    meanwhile by another worker counts as found); one line."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        found = await client.read_work_pool(pool)
        return f"work pool {pool}: exists ({found.type})"
    except ObjectNotFound:
        try:
            await client.create_work_pool(WorkPoolCreate(
                name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
        except ObjectAlreadyExists:
            return f"work pool {pool}: exists"
        return f"work pool {pool}: created (process)"


async def _setup(pool: str, gpu_limit: str, gpu_slots: int, unresponsive_after: float) -> list[str]:
    from prefect.client.orchestration import get_client

    lines = []
    async with get_client() as client:
        lines.append(await ensure_pool(client, pool))
        await client.upsert_global_concurrency_limit_by_name(gpu_limit, gpu_slots)
        lines.append(f"global concurrency limit {gpu_limit}: {gpu_slots} slot(s)")
        automation = crash_automation(unresponsive_after)
        existing = await client.read_automations_by_name(CRASH_AUTOMATION)
        if existing:
            await client.update_automation(existing[0].id, automation)
            for extra in existing[1:]:
                await client.delete_automation(extra.id)
        else:
            await client.create_automation(automation)
        lines.append(f"automation '{CRASH_AUTOMATION}': after {unresponsive_after:g} s without a heartbeat")
    return lines
