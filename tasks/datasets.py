"""Dataset tasks: fingerprint a dataset, announce new or changed dataset files."""
from __future__ import annotations

from prefect import task
from prefect.events import emit_event

from weightsim import watch
from weightsim.datasets import load_dataset

EVENT = "weightsim.dataset.changed"


@task
def fingerprint(dataset: str) -> dict:
    """Load and validate a dataset; its description with the content fingerprint."""
    return load_dataset(dataset).describe()


@task
def announce_changes(store: str, overrides: str = "") -> list[str]:
    """Emit one ``weightsim.dataset.changed`` event per new or changed dataset
    entry of the store (payload: ``uri``, ``name``, ``signature``, ``new``,
    and ``overrides`` when given: a JSON object of pipeline parameters);
    returns the URIs announced."""
    changes = watch.scan(store)
    for c in changes:
        emit_event(event=EVENT, resource={"prefect.resource.id": f"weightsim.dataset.{c.name}",
                                          "prefect.resource.name": c.name},
                   payload={"uri": c.uri, "name": c.name, "signature": c.signature, "new": c.new,
                            **({"overrides": overrides} if overrides else {})})
    watch.commit(store, changes)
    return [c.uri for c in changes]
