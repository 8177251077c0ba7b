"""Flows around datasets: rerun the pipeline when a dataset arrives, and the
watcher that announces new or changed dataset files as events."""
from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.datasets import announce_changes, fingerprint

from weightsim.config import Options

from .pipeline import pipeline


@flow(name="on-new-dataset", flow_run_name="new-dataset-{dataset_uri}")
def on_new_dataset(dataset_uri: str, options: dict | None = None) -> dict[str, str]:
    """Register (load, validate, fingerprint) the dataset at ``dataset_uri``,
    then run the whole pipeline on it with ``options`` (pipeline parameters)."""
    info = fingerprint(dataset_uri)
    get_run_logger().info("dataset %s: fingerprint %s, %d classes, %d train / %d test examples", info["name"],
                          info["fingerprint"], info["classes"], info["n_train"], info["n_test"])
    return pipeline(**{**(options or {}), "dataset": dataset_uri})


@flow(name="watch-datasets")
def watch_datasets(store: str = "") -> list[str]:
    """Emit one event per new or changed dataset under ``<store>/datasets/``
    (``store`` defaults to ``$WEIGHTSIM_STORE``, else ``./store``)."""
    return announce_changes(Options(store=store).store)
