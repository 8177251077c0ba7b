"""Flows around datasets: rerun a sweep template when a dataset arrives, and
the watcher that announces new or changed dataset files as events."""
from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.datasets import announce_changes, fingerprint
from weightsim.config import Options, given_options, make_options, parse_overrides
from weightsim.errors import WeightsimError
from weightsim.uris import redact

from .naming import own_tags
from .pipeline import pipeline

D = Options.defaults()
# the sweep a new dataset gets unless the deployment's template says otherwise
TEMPLATE = {k: D[k] for k in ("archs", "problems", "seeds", "epochs", "permutations")}


def _dataset_label(parameters: dict) -> str:
    """The last path segment of the dataset's URI, without credentials."""
    uri = redact(str(parameters.get("dataset_uri", "dataset"))).rstrip("/")
    return uri.rsplit("/", 1)[-1] or uri


@flow(name="on-new-dataset", flow_run_name=lambda: "new-dataset-" + _dataset_label(_parameters()))
def on_new_dataset(dataset_uri: str, template: dict | None = None, overrides: str = "") -> dict[str, str]:
    """Run the sweep ``template`` (pipeline parameters; default ``TEMPLATE``)
    on the dataset at ``dataset_uri``, adapted to what the dataset can hold
    (e.g. a 3-class dataset gets its 3 pair problems): the adaptations are
    logged and recorded with the sweep. ``overrides``: a JSON object of
    pipeline parameters (e.g. from the event's payload) over the template."""
    logger = get_run_logger()
    info = fingerprint(dataset_uri)
    logger.info("dataset %s: fingerprint %s, %d classes, %d train / %d test examples", info["name"],
                info["fingerprint"], info["classes"], info["n_train"], info["n_test"])
    extra = parse_overrides(overrides)
    opts, adaptations = make_options(given_options({**TEMPLATE, **(template or {}), **extra,
                                                    "dataset": dataset_uri})).fitted_to(info["classes"])
    for change in adaptations:
        logger.info("adapted to %s: %s", info["name"], change)
    opts.check_analysable()  # here, before the pipeline subflow, so a sweep the dataset cannot hold fails once
    with own_tags():
        return pipeline(**{**opts.to_dict(), "archs": ",".join(opts.archs)}, adaptations=adaptations)


def _parameters() -> dict:
    from prefect.runtime import flow_run

    return flow_run.parameters or {}


@flow(name="watch-datasets", flow_run_name=lambda: "watch-" + (_parameters().get("store") or "store"))
def watch_datasets(store: str = "", overrides: str = "") -> list[str]:
    """Emit one event per new or changed dataset under ``<store>/datasets/``
    (``store`` defaults to ``$WEIGHTSIM_STORE``, else ``./store``); logs
    what it announced. ``overrides``: a JSON object of pipeline parameters
    the events carry, over the ``on-new-dataset`` template."""
    root = Options(store=store).store
    uris = announce_changes(root, overrides if parse_overrides(overrides) else "")
    logger = get_run_logger()
    for uri in uris:
        logger.info("announced %s", uri)
    if not uris:
        logger.info("no new or changed dataset in %s/datasets", root)
    return uris
