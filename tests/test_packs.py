"""Packs: many runs' rows in one file; layer scans read them in one go."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from weightsim import packs, scan, tables
from weightsim.archs import arch_spec, build
from weightsim.errors import SpecError, TableError

from services import thread_counts


def _tables(root, n, arch="mlp", final=3, start=0):
    spec = arch_spec(arch, (8, 8), 2)
    uris, states = [], {}
    for i in range(start, start + n):
        torch.manual_seed(i)
        cps = {0: build(spec).state_dict(), final: build(spec).state_dict()}
        meta = {"run_id": f"r{i}", "seed": i, "arch": arch, "spec": spec.to_dict(), "config": {"epochs": final},
                "metrics": {"test_accuracy": 0.5}, "dataset": {"name": "digits", "fingerprint": "f"},
                "problem": {"name": "3v8", "classes": [3, 8]}}
        uris.append(tables.write(str(root), f"weights/dataset=digits/arch={arch}/problem=3v8/r{i}.parquet", cps, meta))
        states[f"r{i}"] = cps
    return uris, states


def test_scan_reads_packed_and_unpacked_runs_alike(tmp_path, monkeypatch):
    uris, states = _tables(tmp_path, 6)
    more, more_states = _tables(tmp_path, 2, final=5, start=6)  # another final epoch, packed too
    states.update(more_states)
    per_table = scan.scan_layer(str(tmp_path), "layers.1.weight", uris + more)
    monkeypatch.setattr(packs, "GROUP_VALUES", 3000)  # several row groups per tensor
    pack = packs.write_pack(str(tmp_path), uris[:4] + more)
    assert pack.startswith(str(tmp_path)) and "/packs/dataset=digits/arch=mlp/" in pack
    assert set(packs.pack_index(str(tmp_path))) == {"r0", "r1", "r2", "r3", "r6", "r7"}
    md = pq.ParquetFile(pack).metadata
    assert md.num_row_groups > 2 * len(states["r0"][0])  # split by tensor, epoch and size
    for epoch in (None, 0):
        got = scan.scan_layer(str(tmp_path), "layers.1.weight", uris + more, epoch=epoch)
        assert sorted(got) == sorted(states)
        for run_id, cps in states.items():
            want = cps[max(cps)] if epoch is None else cps[0]
            np.testing.assert_array_equal(got[run_id], want["layers.1.weight"].numpy())
    assert all(np.array_equal(per_table[k], v) for k, v in
               scan.scan_layer(str(tmp_path), "layers.1.weight", uris + more).items())


def test_pack_rows_are_verified(tmp_path):
    uris, _ = _tables(tmp_path, 3)
    pack = packs.write_pack(str(tmp_path), uris)
    table = pq.read_table(pack)
    values = table.column("values").to_pylist()
    i = table.column("name").to_pylist().index("out.weight")
    values[i][0] += 1.0
    table = table.set_column(table.schema.get_field_index("values"), "values",
                             pa.array(values, table.schema.field("values").type))
    pq.write_table(table, pack)
    with pytest.raises(TableError, match="checksum mismatch in row out.weight"):
        scan.scan_layer(str(tmp_path), "out.weight", uris, epoch=0)


def test_pack_needs_one_dataset_and_arch_and_good_tables(tmp_path):
    a, _ = _tables(tmp_path, 1)
    b, _ = _tables(tmp_path, 1, arch="cnn", start=5)
    with pytest.raises(SpecError, match="one dataset and arch"):
        packs.write_pack(str(tmp_path), a + b)
    with open(tables.read_run(a[0]).uri, "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 50)
    with pytest.raises(TableError, match="r0.parquet"):
        packs.write_pack(str(tmp_path), a)
    assert not list(tmp_path.glob("packs/**/*.parquet"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_store_reads_start_no_arrow_thread(tmp_path):
    """Layer scans (tables and packs), initialization digests and table reads
    run on the calling thread: an Arrow pool thread alive when the
    interpreter exits can abort it (exit 134)."""
    uris, _ = _tables(tmp_path, 4)
    packs.write_pack(str(tmp_path), uris[:2])
    before, *after = thread_counts(
        f"import torch; from weightsim import inits, scan, tables; from weightsim.store import open_store\n"
        f"torch.ones(4).sum(); st = open_store({str(tmp_path)!r}); uris = {uris!r}",
        ["scan.scan_layer(st, 'layers.1.weight', uris)", "inits.labels(st, uris)",
         "[tables.read_run_epochs(u, [0, None], st) for u in uris]"])
    assert after == [before] * 3
