import pytest
import torch

from weightsim.archs import arch_spec
from weightsim.datasets import load_dataset
from weightsim.errors import SpecError
from weightsim.problems import Problem
from weightsim.runs import RunKey, TrainConfig, parse_checkpoints
from weightsim.store import Store
from weightsim.sweep import train_missing
from weightsim.training import train_run


def key(arch="mlp", seed=0, **cfg):
    d = load_dataset("digits")
    spec = arch_spec(arch, d.shape, 2)
    return d, RunKey("digits", d.fingerprint, Problem((3, 8)), arch, spec, seed, TrainConfig(**{"epochs": 2, **cfg}))


@pytest.mark.parametrize("arch", ["mlp", "cnn-bn", "rnn", "gru"])
def test_bit_identical_on_cpu(arch):
    d, k = key(arch)
    a, b = train_run(k, d), train_run(k, d)
    for epoch in a.checkpoints:
        for name, t in a.checkpoints[epoch].items():
            assert torch.equal(t, b.checkpoints[epoch][name]), name
    assert a.metrics["loss_curve"] == b.metrics["loss_curve"]


def test_seed_changes_init_and_order():
    d, k0 = key(seed=0)
    _, k1 = key(seed=1)
    a, b = train_run(k0, d), train_run(k1, d)
    assert not torch.equal(a.checkpoints[0]["layers.0.weight"], b.checkpoints[0]["layers.0.weight"])
    assert k0.run_id != k1.run_id


def test_checkpoints_and_metrics():
    d, k = key(epochs=4, checkpoints=parse_checkpoints("0,2,final", 4))
    r = train_run(k, d)
    assert sorted(r.checkpoints) == [0, 2, 4]
    assert len(r.metrics["loss_curve"]) == 4 and r.metrics["test_accuracy"] > 0.8
    assert r.metrics["loss_curve"][-1] < r.metrics["loss_curve"][0]


def test_divergence_is_recorded_not_retried(tmp_path, monkeypatch):
    """A run that diverges gets no table but a record (key, epoch, loss),
    bound to its key; the next sweep does not train it again."""
    from weightsim import divergence, sweep

    d, k = key(lr=1e6, momentum=0.9)
    st, seen = Store(str(tmp_path)), []
    assert train_missing(st, [k], d, on_diverged=lambda key, r: seen.append(r)) == []
    assert not list(tmp_path.rglob("*.parquet"))
    (record,) = seen
    assert record["run_id"] == k.run_id and record["key"] == k.key and record["epoch"] >= 1
    assert divergence.divergence_of(st, k.key) == record and "diverged" in record["error"]
    monkeypatch.setattr(sweep, "_train", lambda *a: pytest.fail("a diverged run was trained again"))
    assert train_missing(st, [k], d, on_diverged=lambda key, r: seen.append(r)) == [] and len(seen) == 2
    other = key(lr=1e6, momentum=0.9, seed=1)[1]  # a record copied under another run's name is not its record
    open(tmp_path / divergence.diverged_key(other.key), "w").write(open(tmp_path / divergence.diverged_key(k.key)).read())
    assert divergence.divergence_of(st, other.key) is None


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"lr": -1.0}, {"momentum": 1.0}, {"checkpoints": (7,)}])
def test_bad_configs(bad):
    with pytest.raises(SpecError):
        TrainConfig(**{"epochs": 3, **bad})


def test_init_is_thread_safe():
    """Tasks train in threads: concurrent initializations must not share draws
    of the global RNG (each must equal its sequential twin, bit for bit)."""
    import threading

    from weightsim.training import init_model

    d = load_dataset("digits")
    keys = [RunKey("digits", d.fingerprint, Problem((3, 8)), "cnn", arch_spec("cnn", d.shape, 2), s, TrainConfig())
            for s in range(8)]
    ref = {k.seed: init_model(k).state_dict() for k in keys}
    for _ in range(10):
        out = {}
        threads = [threading.Thread(target=lambda k=k, out=out: out.__setitem__(k.seed, init_model(k).state_dict()))
                   for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(torch.equal(ref[s][n], out[s][n]) for s in ref for n in ref[s])
