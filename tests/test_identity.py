"""Run identity: what a run id covers, tables bound to their runs, packs that
cannot go stale silently, checkpoints the contract promises."""
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from flows.cli import main
from weightsim import chain, engine, packs, scan, sweep, tables
from weightsim.archs import arch_spec, build_seeded
from weightsim.config import Options
from weightsim.sweep import plan_sweep
from weightsim.runs import TrainConfig
from weightsim.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_api")  # runs flows: the session's Prefect server

TINY = ["--dataset", "digits", "--archs", "mlp", "--problems", "2", "--seeds", "2", "--epochs", "1", "--partial"]


def _train(store, *extra):
    assert main(["train", *TINY, "--store", str(store), *extra]) == 0


def test_precision_is_part_of_the_run_id(tmp_path, capsys):
    """A bf16 sweep on a store trained in fp32 trains its own runs."""
    _train(tmp_path)
    assert "4 trained, 0 already there" in capsys.readouterr().out
    _train(tmp_path, "--precision", "bf16")
    assert "4 trained, 0 already there" in capsys.readouterr().out
    runs = [tables.read_run(u) for u in tables.list_runs(str(tmp_path))]
    assert sorted(r.meta["config"].get("precision", "fp32") for r in runs) == ["bf16"] * 4 + ["fp32"] * 4
    assert all(r.meta["metrics"]["precision"] == r.meta["config"]["precision"] for r in runs)
    assert all(r.meta["metrics"]["engine"] in ("batched", "loop") and r.meta["metrics"]["batch_seeds"] >= 1
               for r in runs)
    _train(tmp_path, "--precision", "bf16")
    assert "0 trained, 4 already there" in capsys.readouterr().out


def test_fp32_run_ids_are_unchanged():
    """fp32 runs keep the ids of the tables written before precision joined the key."""
    d, keys = plan_sweep(Options(archs="mlp", problems=1, seeds=1, epochs=1))
    assert keys[0].run_id == "7f49cd8645eea7d584e1"  # computed by the code before precision joined the key


def test_seeds_per_batch_do_not_depend_on_free_memory(monkeypatch):
    spec = arch_spec("cnn", (8, 8), 2)
    before = engine.max_seeds(spec, 32)
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_AVPHYS_PAGES" else real(name))
    assert engine.max_seeds(spec, 32) == before > 1


def test_the_same_command_writes_the_same_tables(tmp_path):
    for store in (tmp_path / "a", tmp_path / "b"):
        assert main(["train", *TINY[:3], "cnn", *TINY[4:], "--store", str(store)]) == 0
    a, b = (sorted(tables.list_runs(str(tmp_path / s))) for s in "ab")
    assert [os.path.basename(u) for u in a] == [os.path.basename(u) for u in b]
    for ua, ub in zip(a, b):
        ra, rb = tables.read_run(ua), tables.read_run(ub)
        assert all(torch.equal(ra.state_dict[k], rb.state_dict[k]) for k in ra.state_dict)


def test_epoch_zero_is_always_kept(tmp_path):
    assert TrainConfig(epochs=5, checkpoints=(5,)).checkpoints == (0, 5)
    _train(tmp_path, "--checkpoints", "final")
    for uri in tables.list_runs(str(tmp_path)):
        assert tables.read_meta(uri)["checkpoints"] == [0, 1]
        tables.read_run(uri, epoch=0)


def test_a_table_copied_over_another_run_is_retrained(tmp_path, capsys):
    _train(tmp_path)
    capsys.readouterr()
    a, b = sorted(tables.list_runs(str(tmp_path)))[:2]
    shutil.copyfile(a, b)
    _train(tmp_path)
    assert "1 trained, 3 already there" in capsys.readouterr().out
    assert tables.read_meta(b)["run_id"] == os.path.basename(b).removesuffix(".parquet")
    # a table whose metadata was re-encoded to claim another run is not taken either
    _, keys = plan_sweep(Options(archs="mlp", problems=2, seeds=2, epochs=1))
    st = open_store(str(tmp_path))
    k = keys[0]
    run = tables.read_run_epochs(st.key_uri(k.key), [0, None])
    meta = tables.read_meta(st.key_uri(k.key))
    forged = {**{x: meta[x] for x in ("run_id", "seed", "spec", "config", "metrics", "dataset", "problem")},
              "arch": "gru"}
    st.put_bytes(k.key, tables.encode({0: run[0].state_dict, 1: run[1].state_dict}, forged))
    assert not sweep.is_done(st, k)


def test_a_stale_pack_is_not_used(tmp_path, caplog):
    _train(tmp_path)
    uris = sorted(tables.list_runs(str(tmp_path)))
    packs.write_pack(str(tmp_path), uris)
    run0, run1 = tables.read_run_epochs(uris[0], [0, None])
    meta = tables.read_meta(uris[0])
    new = {k: v + 1.0 for k, v in run1.state_dict.items()}
    st = open_store(str(tmp_path))
    st.put_bytes(st.key_of(uris[0]), tables.encode(
        {0: run0.state_dict, 1: new}, {x: meta[x] for x in ("run_id", "seed", "arch", "spec", "config", "metrics",
                                                            "dataset", "problem")}))
    with caplog.at_level(logging.WARNING):
        got = scan.scan_layer(str(tmp_path), "out.weight", uris)
    assert np.array_equal(got[meta["run_id"]], new["out.weight"].numpy())
    assert "stale" in caplog.text
    other = tables.read_meta(uris[1])["run_id"]
    assert np.array_equal(got[other], tables.read_run(uris[1]).state_dict["out.weight"].numpy())


def test_cnn_tanh_has_no_max_pool_and_keeps_its_symmetry():
    spec = arch_spec("cnn-tanh", (8, 8), 2)
    assert spec.activation == "tanh" and not spec.pool
    model = build_seeded(spec, 0).double()
    sd = model.state_dict()
    moved = chain.random_symmetry(sd, spec, 1)
    x = torch.randn(5, *spec.input_shape, dtype=torch.float64)
    with torch.no_grad():
        y0 = model(x)
        model.load_state_dict(moved)
        assert torch.allclose(model(x), y0, atol=1e-10)
    np.testing.assert_allclose(chain.features(sd, spec), chain.features(moved, spec), atol=1e-10)


@pytest.mark.parametrize("arch", ["cnn-tanh"])
def test_cnn_tanh_trains(tmp_path, arch, capsys):
    assert main(["train", *TINY[:3], arch, *TINY[4:], "--store", str(tmp_path)]) == 0
    assert "4 trained" in capsys.readouterr().out


@pytest.mark.parametrize("arch,dataset", [("cnn", "digits"), ("cnn-bn", "digits"), ("cnn", "mnist1d")])
def test_seeds_trained_together_do_not_change_a_networks_bits(arch, dataset):
    """K = 2 and K = 8 give identical CNN weights (grouped convolutions of a
    fixed number of groups); MLP and recurrent stacks are batched GEMMs."""
    d, keys = plan_sweep(Options(dataset=dataset, archs=arch, problems=1, seeds=8, epochs=1))
    two, eight = engine.train_batch(keys[:2], d), engine.train_batch(keys, d)
    for a, b in zip(two, eight[:2]):
        for epoch in a.checkpoints:
            assert all(torch.equal(a.checkpoints[epoch][k], b.checkpoints[epoch][k]) for k in a.checkpoints[epoch])


def test_json_digest_is_the_recipe_every_stored_id_was_made_with():
    import hashlib
    import json

    from weightsim.digest import json_digest

    payload = {"b": [1, 2.5, "x"], "a": {"z": None, "y": True}}
    old = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    assert json_digest(payload) == old and json_digest(payload, 20) == old[:20]
    odd = {"when": __import__("datetime").date(2026, 1, 2)}
    assert json_digest(odd, 24, default=str) == \
        hashlib.sha256(json.dumps(odd, sort_keys=True, default=str).encode()).hexdigest()[:24]
    parts = [("/a.npz", 3, "etag")]  # the dataset signature (weightsim.watch) had no sort_keys: a list is unchanged
    assert json_digest(parts, 16) == hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
