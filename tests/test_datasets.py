import gzip
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from weightsim.datasets import builtins
from weightsim.datasets import load_dataset, read_cifar_batch, read_idx
from weightsim.errors import DatasetError


def test_builtins():
    d = load_dataset("digits")
    assert d.shape == (8, 8) and len(d.classes) == 10 and d.x_train.dtype == np.float32
    assert len(d.y_train) + len(d.y_test) == 1797
    m = load_dataset("mnist1d")
    assert m.shape == (40,) and len(m.y_test) == 1000
    s = load_dataset("synthetic:classes=4,shape=3x32x32,train=5,test=2,seed=3")
    assert s.shape == (3, 32, 32) and len(s.y_train) == 20 and len(s.y_test) == 8
    assert load_dataset("synthetic:classes=4,shape=3x32x32,train=5,test=2,seed=3").fingerprint == s.fingerprint
    assert load_dataset("synthetic:classes=4,shape=3x32x32,train=5,test=2,seed=4").fingerprint != s.fingerprint


def test_builtin_cache_is_bound_to_its_key(tmp_path, monkeypatch):
    """A built-in is made once and read back from the cache, equal to the one
    made; a cached file of another key (other code, another version) or a
    damaged one is made again, never trusted; an unwritable cache only costs
    the next load."""
    monkeypatch.setenv("WEIGHTSIM_CACHE", str(tmp_path))
    made = builtins._make_digits()
    calls = []

    def make():
        calls.append(1)
        return made

    assert builtins._cached_builtin("digits", "scikit-learn", make).fingerprint == made.fingerprint
    (path,) = tmp_path.glob("digits-*.npz")
    again = builtins._cached_builtin("digits", "scikit-learn", make)
    assert len(calls) == 1 and again.fingerprint == made.fingerprint
    with np.load(path) as z:
        arrays = dict(z)
    np.savez(path, **{**arrays, "key": np.array("digits scikit-learn==0.1 code 0"), "x_train": arrays["x_train"] + 1})
    assert builtins._cached_builtin("digits", "scikit-learn", make).fingerprint == made.fingerprint
    assert len(calls) == 2  # the other key's file was made again
    path.write_bytes(path.read_bytes()[:1000])
    assert builtins._cached_builtin("digits", "scikit-learn", make).fingerprint == made.fingerprint
    assert len(calls) == 3
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("WEIGHTSIM_CACHE", str(tmp_path / "file" / "cache"))
    assert builtins._cached_builtin("digits", "scikit-learn", make).fingerprint == made.fingerprint


def test_cached_digits_load_without_scikit_learn(tmp_path):
    """The first load of digits makes it with scikit-learn; later processes
    read the cache and never import it (a command with nothing new to do
    does not pay for the import)."""
    code = ("import sys; from weightsim.datasets import load_dataset; d = load_dataset('digits'); "
            "print(d.fingerprint, 'sklearn' in sys.modules)")
    env = {**os.environ, "WEIGHTSIM_CACHE": str(tmp_path)}
    first, second = (subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout.split() for _ in range(2))
    assert first[1] == "True" and second[1] == "False" and first[0] == second[0] == load_dataset("digits").fingerprint


@pytest.mark.parametrize("name", ["nosuch", "synthetic:colors=3", "synthetic:classes=x", "synthetic:classes=1",
                                  "synthetic:shape=100000x100000x100000", "synthetic:train=1000000000",
                                  "synthetic:classes=1000000"])  # the last three: over the byte limit, not allocated
def test_bad_names(name):
    with pytest.raises(DatasetError):
        load_dataset(name)


def _arrays(rng, n=20, shape=(4, 4)):
    return (rng.integers(0, 255, (n, *shape), dtype=np.uint8), rng.integers(0, 3, n),
            rng.integers(0, 255, (n // 2, *shape), dtype=np.uint8), rng.integers(0, 3, n // 2))


def test_npz_and_fingerprint(tmp_path):
    rng = np.random.default_rng(0)
    xtr, ytr, xte, yte = _arrays(rng)
    p = tmp_path / "mine.npz"
    np.savez(p, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    d = load_dataset(str(p))
    assert d.name == "mine" and d.shape == (4, 4)
    np.testing.assert_allclose(d.x_train, xtr / 255.0, rtol=1e-6)
    fp = d.fingerprint
    xtr[0, 0, 0] ^= 1
    np.savez(p, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    assert load_dataset(str(p)).fingerprint != fp
    np.savez(p, x_train=xtr, y_train=ytr)
    with pytest.raises(DatasetError, match="missing arrays"):
        load_dataset(str(p))
    p.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="npz"):
        load_dataset(str(p))
    obj = np.array([{"a": 1}], dtype=object)
    np.savez(p, x_train=obj, y_train=ytr, x_test=xte, y_test=yte)
    with pytest.raises(DatasetError):
        load_dataset(str(p))


def test_parquet_list_and_columns(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 2, 3)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    split = ["train"] * 8 + ["test"] * 4
    t = pa.table({"split": split, "label": y, "x": list(x.reshape(12, -1))}).replace_schema_metadata({"shape": "2,3"})
    pq.write_table(t, tmp_path / "a.parquet")
    d = load_dataset(str(tmp_path / "a.parquet"))
    assert d.shape == (2, 3)
    np.testing.assert_array_equal(d.x_test, x[8:])
    t2 = pa.table({"split": split, "label": y, "f0": x[:, 0, 0], "f1": x[:, 1, 2]})
    pq.write_table(t2, tmp_path / "b.parquet")
    d2 = load_dataset(str(tmp_path / "b.parquet"))
    assert d2.shape == (2,)
    pq.write_table(pa.table({"label": y}), tmp_path / "c.parquet")
    with pytest.raises(DatasetError, match="split"):
        load_dataset(str(tmp_path / "c.parquet"))


def _idx(arr: np.ndarray, code: int) -> bytes:
    head = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, ">i4").tobytes()
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder(tmp_path, gz):
    rng = np.random.default_rng(2)
    xtr, ytr, xte, yte = _arrays(rng, shape=(5, 5))
    files = {"train-images-idx3-ubyte": _idx(xtr, 8), "train-labels-idx1-ubyte": _idx(ytr.astype(np.uint8), 8),
             "t10k-images-idx3-ubyte": _idx(xte, 8), "t10k-labels-idx1-ubyte": _idx(yte.astype(np.uint8), 8)}
    for name, data in files.items():
        (tmp_path / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    d = load_dataset(str(tmp_path))
    np.testing.assert_array_equal(d.y_train, ytr)
    np.testing.assert_allclose(d.x_test, xte / 255.0, rtol=1e-6)
    assert read_idx(_idx(np.arange(6, dtype=np.float32).reshape(2, 3), 0x0D)).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DatasetError, match="header"):
        read_idx(files["train-images-idx3-ubyte"][:-3])
    with pytest.raises(DatasetError, match="magic"):
        read_idx(b"\x01\x02\x03\x04")


def _cifar_batch(x, labels, key=b"labels"):
    return pickle.dumps({b"batch_label": b"test", key: list(labels), b"data": x}, protocol=2)


def test_cifar10_and_100(tmp_path):
    rng = np.random.default_rng(3)
    c10 = tmp_path / "c10"
    c10.mkdir()
    x = rng.integers(0, 255, (6, 3072), dtype=np.uint8)
    for i in (1, 2):
        (c10 / f"data_batch_{i}").write_bytes(_cifar_batch(x, [0, 1, 2, 0, 1, 2]))
    (c10 / "test_batch").write_bytes(_cifar_batch(x[:3], [2, 1, 0]))
    d = load_dataset(str(c10))
    assert d.shape == (3, 32, 32) and len(d.y_train) == 12
    np.testing.assert_allclose(d.x_test[0], x[0].reshape(3, 32, 32) / 255.0, rtol=1e-6)
    c100 = tmp_path / "c100"
    c100.mkdir()
    (c100 / "train").write_bytes(_cifar_batch(x, [5, 7, 9, 5, 7, 9], b"fine_labels"))
    (c100 / "test").write_bytes(_cifar_batch(x[:2], [5, 9], b"fine_labels"))
    assert set(load_dataset(str(c100)).classes) == {5, 7, 9}


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_hostile_pickle_refused(tmp_path):
    with pytest.raises(DatasetError, match="refused"):
        read_cifar_batch(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    with pytest.raises(DatasetError):
        read_cifar_batch(pickle.dumps(io.BytesIO(b"x")))
    with pytest.raises(DatasetError, match="top level"):
        read_cifar_batch(pickle.dumps([1, 2]))


def test_watch_announces_folders_and_skips_names_it_cannot_address(tmp_path, caplog):
    """A folder dataset (IDX files) is announced like a file, and one entry
    whose name has a space does not block the others."""
    import logging

    from weightsim import watch

    (tmp_path / "datasets/mnist-idx").mkdir(parents=True)
    (tmp_path / "datasets/mnist-idx/train-images-idx3-ubyte").write_bytes(b"\0" * 16)
    (tmp_path / "datasets/empty").mkdir()
    (tmp_path / "datasets/my data.parquet").write_bytes(b"x")
    (tmp_path / "datasets/ok.npz").write_bytes(b"y")
    with caplog.at_level(logging.WARNING):
        changes = watch.scan(str(tmp_path))
    assert sorted(c.name for c in changes) == ["empty", "mnist-idx", "ok.npz"]
    assert "my data.parquet" in caplog.text
    watch.commit(str(tmp_path), changes)
    assert watch.scan(str(tmp_path)) == []
    (tmp_path / "datasets/mnist-idx/train-labels-idx1-ubyte").write_bytes(b"\0" * 8)
    assert [c.name for c in watch.scan(str(tmp_path))] == ["mnist-idx"]


def test_check_source_imports_nothing_heavy():
    """The CLI refuses an unknown dataset before heavy imports: importing
    weightsim.datasets and checking names loads no scikit-learn, mnist1d,
    pyarrow or torch."""
    code = ("import sys; from weightsim.datasets import check_source\n"
            "for name in ('digits', 'mnist1d', 'synthetic:classes=3', 'x.npz', 's3://b/d.parquet'): check_source(name)\n"
            "try: check_source('nope')\nexcept Exception as exc: print(type(exc).__name__)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'mnist1d', 'pyarrow', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["DatasetError", "[]"]
