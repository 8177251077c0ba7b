"""Readable flow-run names from the run's parameters, and the run's tags
passed on to what it starts."""
from __future__ import annotations

from prefect import tags
from prefect.runtime import flow_run

from weightsim.config import Options
from weightsim.datasets import dataset_name


def run_label() -> str:
    """``<dataset>-<archs>`` of the current flow run, e.g. ``digits-mlp+cnn``."""
    params = flow_run.parameters or {}
    opts = params.get("options") or params
    dataset = str(opts.get("dataset") or opts.get("dataset_uri") or Options.dataset)
    archs = opts.get("archs") or Options.archs
    archs = archs.split(",") if isinstance(archs, str) else archs
    return f"{dataset_name(dataset)}-{'+'.join(archs)}"


def own_tags():
    """The current flow run's tags (a deployment's, e.g. ``weightsim``) as
    the tags of every subflow and task it starts: the UI filters them
    together, and the crash automation of ``flows.setup`` watches the
    subflows too, so none stays Running after its machine died."""
    return tags(*(flow_run.tags or []))


def sweep_tags(dataset: str, sweep: str):
    """The current flow run tagged ``dataset:<dataset>`` and
    ``sweep:<sweep>``, as the CLI tags the runs it starts (a deployment's
    run has only the deployment's tags), and those tags on every subflow and
    task it starts."""
    from prefect.client.orchestration import get_client

    wanted = [f"dataset:{dataset}", f"sweep:{sweep}"]
    have = list(flow_run.tags or [])
    if flow_run.id and not set(wanted) <= set(have):
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, tags=have + [t for t in wanted if t not in have])
    return tags(*wanted)
