"""Flows around datasets: rerun a sweep template when a dataset arrives, and
the watcher that announces new or changed dataset files as events."""
from __future__ import annotations

import json

from prefect import flow, get_run_logger

from tasks.datasets import announce_changes, fingerprint
from weightsim import catalog, design, loader
from weightsim.config import Options
from weightsim.sweep import fitted_to
from weightsim.datasets import stem

from .logs import one_line_errors
from .naming import own_tags, sweep_tags
from .pipeline import pipeline

D = Options.defaults()
# the sweep a new dataset gets unless the deployment's template says otherwise
TEMPLATE = {k: D[k] for k in ("archs", "problems", "seeds", "epochs", "permutations")}


@flow(name="on-new-dataset",
      flow_run_name=lambda: "new-dataset-" + stem(str(_parameters().get("dataset_uri") or "dataset")))
def on_new_dataset(dataset_uri: str, template: dict | None = None, overrides: dict | str = "") -> dict[str, str]:
    """Run a sweep template on a dataset that arrived, adapted to what the
    dataset can hold (e.g. a 3-class dataset gets its 3 pair problems): the
    adaptations are logged and recorded with the sweep. The run is named
    ``new-dataset-<name>`` after the dataset as the store names it.

    Args:
        dataset_uri: the dataset file (a path or URI, e.g. s3://bucket/store/datasets/three.npz).
        template: pipeline parameters of the sweep (default: archs, problems, seeds, epochs and
            permutations of the pipeline's defaults).
        overrides: pipeline parameters over the template, as a JSON object or its text (an event's
            payload may carry either)."""
    one_line_errors()
    logger = get_run_logger()
    info = fingerprint(dataset_uri)
    logger.info("dataset %s: fingerprint %s, %d classes, %d train / %d test examples", info["name"],
                info["fingerprint"], info["classes"], info["n_train"], info["n_test"])
    extra = loader.parse_overrides(overrides)
    opts, adaptations = fitted_to(loader.load({**TEMPLATE, **(template or {}), **extra, "dataset": dataset_uri}),
                                  info["classes"])
    for change in adaptations:
        logger.info("adapted to %s: %s", info["name"], change)
    design.check_analysable(opts.problems, opts.seeds, opts.permutations)  # before the pipeline subflow, so a
    # sweep the dataset cannot hold fails once
    with own_tags(), sweep_tags(info["name"], catalog.named(opts, info["fingerprint"]).sweep):
        return pipeline(**{**opts.to_dict(), "archs": ",".join(opts.archs)}, adaptations=adaptations)


def _parameters() -> dict:
    from prefect.runtime import flow_run

    return flow_run.parameters or {}


@flow(name="watch-datasets", flow_run_name=lambda: "watch-" + (_parameters().get("store") or "store"))
def watch_datasets(store: str = "", overrides: dict | str = "") -> list[str]:
    """Emit one event per new or changed dataset under ``<store>/datasets/``
    (``store`` defaults to ``$WEIGHTSIM_STORE``, else ``./store``); logs
    what it announced. ``overrides``: pipeline parameters the events carry
    over the ``on-new-dataset`` template, as a JSON object or its text
    (checked here, before anything is announced)."""
    one_line_errors()
    root = loader.load({"store": store or None}).store
    extra = loader.parse_overrides(overrides)
    uris = announce_changes(root, json.dumps(extra) if extra else "")
    logger = get_run_logger()
    for uri in uris:
        logger.info("announced %s", uri)
    if not uris:
        logger.info("no new or changed dataset in %s/datasets", root)
    return uris
