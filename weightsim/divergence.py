"""Runs that diverged: a record beside where the run's table would be, so
a rerun does not train them again and the analysis leaves them out."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .errors import DivergenceError
from .store import Store

if TYPE_CHECKING:
    from .runs import RunKey


def diverged_key(table_key: str) -> str:
    """Where a run that diverged is recorded: beside its table's key."""
    return table_key.removesuffix(".parquet") + ".diverged.json"


def record_divergence(store: Store, key: RunKey, error: DivergenceError) -> str:
    """Record that ``key`` diverged (``error``: where, epoch, loss); its URI."""
    record = {"run_id": key.run_id, "key": key.key, "arch": key.arch, "problem": key.problem.name,
              "seed": key.seed, "epoch": error.epoch, "loss": error.loss, "error": str(error)}
    return store.put_bytes(diverged_key(key.key), json.dumps(record).encode())


def divergence_of(store: Store, table_key: str) -> dict | None:
    """The divergence record of the run whose table would be at
    ``table_key``, when there is one bound to that key (its run id and key
    match), else None."""
    record = store.get_json(diverged_key(table_key))
    run_id = table_key.rsplit("/", 1)[-1].removesuffix(".parquet")
    ok = isinstance(record, dict) and record.get("key") == table_key and record.get("run_id") == run_id
    return record if ok else None
