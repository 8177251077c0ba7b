"""Queries over a whole store: one row per run, by column projection over
every weight table (pyarrow.dataset; hive partitions dataset/arch/problem)."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds

from .errors import StoreError
from .store import Store, open_store
from .tables import list_runs


def _dataset(st: Store, uris: list[str]) -> pds.Dataset:
    paths = [st.path(st.key_of(u)) for u in uris]
    part = pds.partitioning(flavor="hive", schema=pa.schema([("dataset", pa.string()), ("arch", pa.string()),
                                                            ("problem", pa.string())]))
    return pds.dataset(paths, format="parquet", filesystem=st.fs, partitioning=part,
                       partition_base_dir=f"{st.root}/weights")


def query(store: str | Store, uris: list[str] | None = None) -> pd.DataFrame:
    """One row per run of a store: run_id, dataset, arch, problem, seed,
    test_accuracy, uri — read by column projection over the whole store."""
    st = open_store(store)
    uris = list_runs(st) if uris is None else uris
    cols = ["run_id", "dataset", "arch", "problem", "seed", "test_accuracy"]
    if not uris:
        return pd.DataFrame(columns=[*cols, "uri"])
    try:
        table = _dataset(st, uris).to_table(columns=[*cols, "__filename"])
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(f"cannot scan weight tables in {st.uri}: {str(exc)[:200]}") from None
    df = table.to_pandas().drop_duplicates("run_id").reset_index(drop=True)
    prefix = "s3://" if not st.is_local else ""
    df["uri"] = prefix + df.pop("__filename")
    return df
