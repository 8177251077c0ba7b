"""Readable flow-run names from the run's parameters, and the run's tags
passed on to what it starts."""
from __future__ import annotations

import os

from prefect import tags
from prefect.runtime import flow_run


def run_label() -> str:
    """``<dataset>-<archs>`` of the current flow run, e.g. ``digits-mlp+cnn``."""
    params = flow_run.parameters or {}
    opts = params.get("options") or params
    dataset = str(opts.get("dataset") or opts.get("dataset_uri") or "digits")
    archs = opts.get("archs") or "mlp,cnn,rnn,gru"
    archs = archs.split(",") if isinstance(archs, str) else archs
    return f"{os.path.basename(dataset.rstrip('/')) or dataset}-{'+'.join(archs)}"


def own_tags():
    """The current flow run's tags (a deployment's, e.g. ``weightsim``) as
    the tags of every subflow and task it starts: the UI filters them
    together, and the crash automation of ``flows.setup`` watches the
    subflows too, so none stays Running after its machine died."""
    return tags(*(flow_run.tags or []))
