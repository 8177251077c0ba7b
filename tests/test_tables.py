import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from weightsim import query, scan, tables
from weightsim.archs import arch_spec, build
from weightsim.errors import StoreError, TableError
from weightsim import store as store_module
from weightsim.store import Store, check_name

from faults import put_many_then_fail


def _meta(spec, run_id="r1", seed=0, epochs=3):
    return {"run_id": run_id, "seed": seed, "arch": spec.kind, "spec": spec.to_dict(),
            "config": {"epochs": epochs}, "metrics": {"test_accuracy": 0.75},
            "dataset": {"name": "digits", "fingerprint": "f"}, "problem": {"name": "3v8", "classes": [3, 8]}}


def _write(root, spec, key="weights/dataset=digits/arch=cnn-bn/problem=3v8/r1.parquet", run_id="r1", seed=0):
    torch.manual_seed(seed)
    cps = {0: build(spec).state_dict(), 3: build(spec).state_dict()}
    return tables.write(str(root), key, cps, _meta(spec, run_id, seed)), cps


def test_round_trip_bit_exact_all_checkpoints(tmp_path):
    spec = arch_spec("cnn-bn", (8, 8), 2)
    uri, cps = _write(tmp_path, spec)
    for epoch in (None, 0, 3):
        run = tables.read_run(uri, epoch=epoch)
        want = cps[3 if epoch is None else epoch]
        assert run.state_dict.keys() == want.keys()
        for k, t in want.items():
            assert t.dtype == run.state_dict[k].dtype and torch.equal(t, run.state_dict[k]), k
    run = tables.read_run(uri)
    assert run.meta["epoch"] == 3 and run.meta["problem"] == "3v8" and run.meta["test_accuracy"] == 0.75
    build(run.spec).load_state_dict(run.state_dict)  # loads into build(spec)
    with pytest.raises(TableError, match="epoch 1"):
        tables.read_run(uri, epoch=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                   torch.int32, torch.int8, torch.uint8, torch.bool])
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 4)])
def test_encode_every_dtype_and_shape(dtype, shape):
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * 1e3).to(dtype) if dtype.is_floating_point else \
        torch.randint(0, 2 if dtype == torch.bool else 100, shape, generator=g).to(dtype)
    spec = arch_spec("mlp", (4,), 2)
    data = tables.encode({0: {"x": t}, 1: {"x": t}}, _meta(spec, epochs=1))
    table, _ = tables._parse(data, "mem")
    rows = tables.decode_rows(table, "mem")
    assert rows[0][2].dtype == dtype and rows[0][2].shape == t.shape and torch.equal(rows[0][2], t)


def test_float_values_column_is_float32_list(tmp_path):
    spec = arch_spec("mlp", (8, 8), 2)
    uri, cps = _write(tmp_path, spec, key="weights/dataset=digits/arch=mlp/problem=3v8/r1.parquet")
    t = pq.read_table(uri)
    assert str(t.schema.field("values").type) == "list<element: float>"
    meta = json.loads(t.schema.metadata[b"weightsim"])
    assert meta["checkpoints"] == [0, 3] and meta["spec"]["kind"] == "mlp" and len(meta["checksum"]) == 64


def test_truncated_and_flipped_tables_name_their_uri(tmp_path):
    spec = arch_spec("mlp", (8, 8), 2)
    uri, _ = _write(tmp_path, spec, key="weights/dataset=digits/arch=mlp/problem=3v8/r1.parquet")
    data = open(uri, "rb").read()
    bad = tmp_path / "weights/dataset=digits/arch=mlp/problem=3v8/bad.parquet"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(TableError, match="bad.parquet"):
        tables.read_run(str(bad))
    # flip one bit inside the float payload: caught by the row checksum
    pos = data.index(np.float32(cps_value(uri)).tobytes())
    flipped = bytearray(data)
    flipped[pos] ^= 0x01
    bad.write_bytes(bytes(flipped))
    with pytest.raises(TableError, match="checksum"):
        tables.read_run(str(bad))
    with pytest.raises(TableError, match="no such file"):
        tables.read_run(str(tmp_path / "weights/nope.parquet"))


def cps_value(uri):
    return tables.read_run(uri).state_dict["layers.0.weight"][0, 0]


def test_list_query_scan(tmp_path):
    spec = arch_spec("mlp", (8, 8), 2)
    uris = []
    for i in range(5):
        u, _ = _write(tmp_path, spec, key=f"weights/dataset=digits/arch=mlp/problem=3v8/r{i}.parquet",
                      run_id=f"r{i}", seed=i)
        uris.append(u)
    (tmp_path / "weights/dataset=digits/arch=mlp/problem=3v8/.x.partial").write_bytes(b"junk")
    assert tables.list_runs(str(tmp_path)) == sorted(uris)
    df = query.query(str(tmp_path))
    assert sorted(df.run_id) == [f"r{i}" for i in range(5)]
    assert set(df.arch) == {"mlp"} and set(df.problem) == {"3v8"} and set(df.dataset) == {"digits"}
    assert sorted(df.uri) == sorted(uris)
    layer = scan.scan_layer(str(tmp_path), "layers.1.weight", uris)
    init = scan.scan_layer(str(tmp_path), "layers.1.weight", uris, epoch=0)
    for i, u in enumerate(uris):
        np.testing.assert_array_equal(layer[f"r{i}"], tables.read_run(u).state_dict["layers.1.weight"].numpy())
        np.testing.assert_array_equal(init[f"r{i}"], tables.read_run(u, 0).state_dict["layers.1.weight"].numpy())


def test_row_groups_one_epoch_each_and_big_tensors_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "ROW_GROUP_VALUES", 300)
    spec = arch_spec("mlp", (20,), 2)  # layers.0.weight: 640 values > 300; the rest is small
    uri, cps = _write(tmp_path, spec, key="weights/dataset=digits/arch=mlp/problem=3v8/r1.parquet")
    md = pq.ParquetFile(uri).metadata
    groups = [[(r["epoch"], r["name"]) for r in pq.ParquetFile(uri).read_row_group(g, columns=["epoch", "name"])
               .to_pylist()] for g in range(md.num_row_groups)]
    assert all(len({e for e, _ in g}) == 1 for g in groups)
    assert [(0, "layers.0.weight")] in groups and [(3, "layers.0.weight")] in groups
    assert sum(len(g) for g in groups) == 2 * len(cps[0])
    layer = scan.scan_layer(str(tmp_path), "out.weight", [uri])
    np.testing.assert_array_equal(layer["r1"], cps[3]["out.weight"].numpy())


def test_format_1_tables_still_read_and_scan(tmp_path, monkeypatch):
    """Tables written before the CRC-32 row checksums (format 1) stay readable."""
    spec = arch_spec("mlp", (8, 8), 2)
    monkeypatch.setattr(tables, "FORMAT", 1)
    uri, cps = _write(tmp_path, spec, key="weights/dataset=digits/arch=mlp/problem=3v8/r1.parquet")
    monkeypatch.undo()
    assert json.loads(pq.read_schema(uri).metadata[b"weightsim"])["format"] == 1
    assert torch.equal(tables.read_run(uri).state_dict["out.weight"], cps[3]["out.weight"])
    np.testing.assert_array_equal(scan.scan_layer(str(tmp_path), "out.weight", [uri])["r1"],
                                  cps[3]["out.weight"].numpy())


def test_scan_detects_a_changed_value(tmp_path):
    spec = arch_spec("mlp", (8, 8), 2)
    uri, _ = _write(tmp_path, spec, key="weights/dataset=digits/arch=mlp/problem=3v8/r1.parquet")
    table = pq.read_table(uri)
    values = table.column("values").to_pylist()
    values[-2][0] += 1.0  # out.weight at the final epoch
    table = table.set_column(table.schema.get_field_index("values"), "values",
                             pa.array(values, table.schema.field("values").type))
    pq.write_table(table, uri)
    with pytest.raises(TableError, match="checksum mismatch in row out.weight@3"):
        scan.scan_layer(str(tmp_path), "out.weight", [uri])


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    st = Store(str(tmp_path))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(StoreError):
        st.put_bytes("weights/a.parquet", b"x" * 100)
    assert list(tmp_path.rglob("*")) == [tmp_path / "weights"]


def test_put_many_writes_in_order_and_keeps_what_came_before_an_error(tmp_path):
    st = Store(str(tmp_path))
    uris = st.put_many(((f"weights/q/o{i}.bin", bytes([i]) * (i + 1)) for i in range(40)), workers=4)
    assert uris == [st.key_uri(f"weights/q/o{i}.bin") for i in range(40)]
    assert all(st.get_bytes(f"weights/q/o{i}.bin") == bytes([i]) * (i + 1) for i in range(40))
    put_many_then_fail(st, 5)
    assert sorted(p.name for p in (tmp_path / "weights/p").iterdir()) == [f"o{i}.bin" for i in range(5)]
    assert all(st.get_bytes(f"weights/p/o{i}.bin") == bytes([i]) * 1000 for i in range(5))


def test_put_many_publishes_in_groups_of_bounded_size(tmp_path, monkeypatch):
    st = Store(str(tmp_path))
    monkeypatch.setattr(store_module, "SYNC_GROUP_BYTES", 2500)
    visible = []

    def items():
        for i in range(7):
            visible.append(sorted(p.name for p in tmp_path.glob("weights/o*")))
            yield f"weights/o{i}", b"x" * 1000

    assert len(st.put_many(items())) == 7
    assert visible[3] == ["o0", "o1", "o2"] and visible[6] == [f"o{i}" for i in range(6)]
    assert not list(tmp_path.rglob("*.partial"))


def test_put_many_publishes_nothing_unsynced(tmp_path, monkeypatch):
    st = Store(str(tmp_path))
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(StoreError, match="disk full"):
        st.put_many((f"weights/o{i}.bin", b"x") for i in range(10))
    assert list(tmp_path.rglob("*")) == [tmp_path / "weights"]


def test_a_failing_sync_group_raises_the_real_error(tmp_path, monkeypatch):
    """A sync group that fails (disk full on fsync) raises that error, not a
    missing temporary file; the groups before it stay published, the failed
    one leaves nothing behind; folders are fsynced after the renames."""
    import errno

    st = Store(str(tmp_path))
    monkeypatch.setattr(store_module, "SYNC_GROUP_BYTES", 2500)
    real, synced = os.fsync, []

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append(path)
        if sum(p.endswith(".partial") for p in synced) > 3:  # the second group's files
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StoreError, match="No space left") as info:
        st.put_many((f"weights/o{i}", b"x" * 1000) for i in range(7))
    assert info.value.__cause__.errno == errno.ENOSPC and not info.value.transient  # disk full: no retry
    assert sorted(p.name for p in tmp_path.glob("weights/*")) == ["o0", "o1", "o2"]
    assert str(tmp_path / "weights") in synced  # the folder, after the first group's renames


def test_row_checksums_are_stable():
    """Row checksums of format 2 are part of the file format: tables written
    by earlier versions must keep verifying (values recorded at format 2)."""
    spec = arch_spec("mlp", (4,), 2)
    sd = {"layers.0.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7,
          "layers.0.bias": torch.tensor([1.5, -2.0, 0.25], dtype=torch.bfloat16),
          "out.weight": torch.arange(6, dtype=torch.float64).reshape(2, 3), "steps": torch.tensor(7)}
    meta = {**_meta(spec, epochs=1), "metrics": {"test_accuracy": 0.75}}
    table, _ = tables._parse(tables.encode({0: sd, 1: sd}, meta), "mem")
    assert table.column("checksum").to_pylist() == [
        "bd21739166fae7ca8bd5c3bf2176d71a", "61be41ccdf2848c293dcf0c78ace9f7a", "a929eea0acd6d44a7940bac8ffe041a9",
        "10c1836dad3f98f410e3d2097fa15485", "474d023d666a5ed62b83842c7ad5edfd", "7ea79370d5b85016858ab8d1083a8b49",
        "cc44e73a93c5b0f94c55c7f30a166a31", "d01ce052bc716de7d00ea95ef71f7dcf"]
    # the same checksums from the format's definition, without the code under test: blake2b-128 over
    # "repr(key)|" for epoch, name, layer, role, dtype, shape, run id, seed, test accuracy, then the
    # CRC-32 (4 bytes) and byte length (8 bytes, little-endian) of the values' little-endian bytes
    import hashlib
    import zlib

    for row in table.to_pylist():
        data = (np.asarray(row["values"], "<f4").tobytes() if row["values"] is not None else row["raw"])
        keys = [row[k] for k in ("epoch", "name", "layer", "role", "dtype", "shape", "run_id", "seed",
                                 "test_accuracy")]
        h = hashlib.blake2b("".join(f"{k!r}|" for k in keys).encode(), digest_size=16)
        h.update(zlib.crc32(data).to_bytes(4, "little") + len(data).to_bytes(8, "little"))
        assert h.hexdigest() == row["checksum"], row["name"]


def test_write_many_equals_write(tmp_path):
    spec = arch_spec("cnn-bn", (8, 8), 2)
    runs = []
    for seed in range(3):
        torch.manual_seed(seed)
        runs.append((f"weights/dataset=digits/arch=cnn-bn/problem=3v8/r{seed}.parquet",
                     {0: build(spec).state_dict(), 3: build(spec).state_dict()}, _meta(spec, f"r{seed}", seed)))
    uris = tables.write_many(str(tmp_path / "many"), runs)
    for uri, (key, cps, meta) in zip(uris, runs):
        assert open(uri, "rb").read() == open(tables.write(str(tmp_path / "one"), key, cps, meta), "rb").read()
        run = tables.read_run(uri, epoch=0)
        assert all(torch.equal(run.state_dict[k], v) for k, v in cps[0].items())


@pytest.mark.parametrize("bad", ["..", "../x", "/etc", "a/b", ".hidden", "a b", ""])
def test_names_cannot_escape_store(bad):
    with pytest.raises(StoreError):
        check_name(bad)
    if "/" not in bad.strip("/"):  # a/b is a valid key of two segments
        with pytest.raises(StoreError):
            Store("/tmp/x").path(f"weights/{bad}/y")


def test_a_storage_outage_is_an_outage_not_a_bad_table(tmp_path, monkeypatch):
    """Reading a table while the store is unreachable raises the retryable
    ``StoreError`` (the tasks retry it), never a ``TableError`` that
    ``--skip-bad`` would drop; a FIFO in place of a table is still a bad table."""
    from weightsim import representations
    from weightsim.store import LocalStore

    uri, _ = _write(tmp_path, arch_spec("mlp", (64,), 2))
    fifo = uri.replace("r1.parquet", "r2.parquet")
    os.mkfifo(fifo)
    with pytest.raises(TableError, match="not a regular file"):
        tables.read_run(fifo)

    def down(self, key):
        raise StoreError(f"store {self.uri} is not reachable: ConnectTimeoutError")

    monkeypatch.setattr(LocalStore, "get_bytes", down)
    monkeypatch.setattr(LocalStore, "open_read", down)
    for read in (tables.read_run, tables.read_meta,
                 lambda u: representations.plan(str(tmp_path), "mlp", [u])):
        with pytest.raises(StoreError, match="is not reachable") as info:
            read(uri)
        assert not isinstance(info.value, TableError) and info.value.transient
