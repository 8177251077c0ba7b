import numpy as np
import pytest
import torch

from weightsim.archs import ArchSpec, arch_spec, build
from weightsim.datasets import load_dataset
from weightsim.errors import DatasetError, SpecError
from weightsim.problems import Problem, make_problems, one_vs_rest


def test_problems_deterministic_disjoint_first():
    d = load_dataset("digits")
    p10 = make_problems(d, 10)
    assert p10 == make_problems(d, 10)
    first = [c for p in p10[:5] for c in p.classes]
    assert sorted(first) == list(range(10))  # the first round is disjoint and covers every class
    assert len({tuple(sorted(p.classes)) for p in p10}) == 10
    assert len(make_problems(d, 45)) == 45
    with pytest.raises(DatasetError):
        make_problems(d, 46)
    groups = make_problems(d, 4, k=3)
    assert all(p.num_classes == 3 for p in groups)


def test_problem_select_relabels_and_keeps_split():
    d = load_dataset("digits")
    p = Problem((8, 3))
    x, y = p.select(d, "train")
    assert set(y) == {0, 1} and len(x) == int(np.isin(d.y_train, [3, 8]).sum())
    assert (y == 0).sum() == (d.y_train == 8).sum()
    assert Problem.parse("8v3") == p and p.name == "8v3"


def test_one_vs_rest_problems_are_balanced_deterministic_and_keep_the_class():
    d = load_dataset("digits")
    problems = one_vs_rest(d, 10)
    assert [p.name for p in problems] == [f"{c}vrest" for c in range(10)]
    assert all(Problem.parse(p.name) == p and p.num_classes == 2 for p in problems)
    p = problems[3]
    for split in ("train", "test"):
        x, y = p.select(d, split)
        x_all, y_all = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        assert (y == 0).sum() == (y == 1).sum() == (y_all == 3).sum()  # every 3, as many others
        assert {r.tobytes() for r in x[y == 0]} == {r.tobytes() for r in x_all[y_all == 3]}
        lookup = {r.tobytes(): c for r, c in zip(x_all, y_all)}
        assert len({lookup[r.tobytes()] for r in x[y == 1]} - {3}) == 9  # the rest spans all other classes
        x2, y2 = p.select(d, split)
        assert np.array_equal(x, x2) and np.array_equal(y, y2)  # the same examples for every run
    with pytest.raises(DatasetError, match="between 1 and 10 one-vs-rest"):
        one_vs_rest(d, 11)


def test_one_vs_rest_runs_have_their_own_ids_and_pairs_keep_theirs():
    from types import SimpleNamespace

    from weightsim.runs import RunKey, TrainConfig
    from weightsim.sweep import table_meta

    d = load_dataset("digits")
    spec = arch_spec("mlp", d.shape, 2)
    rest = RunKey("digits", d.fingerprint, Problem((3,), rest=True), "mlp", spec, 0, TrainConfig())
    assert rest.run_id != RunKey("digits", d.fingerprint, Problem((3,)), "mlp", spec, 0, TrainConfig()).run_id
    assert "problem=3vrest" in rest.key and Problem((3, 5)).to_dict() == {"classes": [3, 5]}
    meta = table_meta(SimpleNamespace(key=rest, metrics={}, device="cpu"), d)
    assert meta["problem"] == {"name": "3vrest", "classes": [3], "rest": True}
    assert RunKey.from_meta(meta) == rest


@pytest.mark.parametrize("name,shape", [("mlp", (8, 8)), ("cnn", (8, 8)), ("cnn-bn", (8, 8)), ("rnn", (8, 8)),
                                        ("rnn-tanh", (8, 8)), ("gru", (8, 8)), ("mlp", (40,)), ("cnn", (40,)),
                                        ("rnn", (40,)), ("gru", (40,)), ("cnn-paper", (3, 32, 32)),
                                        ("mlp-paper", (3, 32, 32)), ("gru-paper", (3, 32, 32)), ("resmlp", (8, 8)),
                                        ("resnet", (8, 8)), ("resnet", (40,)), ("transformer", (8, 8)),
                                        ("transformer", (40,)), ("resnet-paper", (3, 32, 32)),
                                        ("transformer-paper", (40,)), ("resmlp-paper", (3, 32, 32))])
def test_build_every_arch(name, shape):
    spec = arch_spec(name, shape, 2)
    model = build(spec)
    x = torch.randn(3, *spec.input_shape)
    assert model(x).shape == (3, 2)
    assert ArchSpec.from_dict(spec.to_dict()) == spec


def test_default_specs():
    assert arch_spec("mlp", (8, 8), 2).input_shape == (64,)
    assert arch_spec("cnn", (8, 8), 2).input_shape == (1, 8, 8)
    assert arch_spec("rnn", (8, 8), 2).input_shape == (8, 8)
    assert arch_spec("cnn", (40,), 2).input_shape == (1, 40)
    assert arch_spec("gru", (40,), 2).input_shape == (8, 5)
    assert arch_spec("mlp-paper", (3, 32, 32), 2).widths == (500, 500, 500)
    assert arch_spec("cnn-paper", (3, 32, 32), 2).batchnorm
    assert arch_spec("transformer", (8, 8), 2).input_shape == (8, 8)  # the 8 rows as 8 tokens of 8 pixels
    assert arch_spec("transformer", (40,), 2).input_shape == (40, 1)  # mnist1d: 40 steps
    assert arch_spec("resnet", (40,), 2).input_shape == (1, 40)
    assert arch_spec("resnet-paper", (3, 32, 32), 2).blocks == 3  # ResNet-20
    old = arch_spec("mlp", (8, 8), 2).to_dict()
    assert "blocks" not in old and "heads" not in old  # the run ids of the older kinds do not move


@pytest.mark.parametrize("bad", ["vit", "mlp-huge", "gru-relu", "mlp-tanh-tanh", "resmlp-tanh", "resnet-bn"])
def test_bad_arch_names(bad):
    with pytest.raises(SpecError):
        arch_spec(bad, (8, 8), 2)


def test_bad_specs():
    with pytest.raises(SpecError):
        ArchSpec("mlp", (4,), (), 2)
    with pytest.raises(SpecError):
        ArchSpec("rnn", (4,), (3,), 2)
    with pytest.raises(SpecError):
        ArchSpec("cnn", (1, 8, 8), (3,), 2, activation="tanh", pool=True)
    with pytest.raises(SpecError):
        ArchSpec("mlp", (4,), (3,), 2, batchnorm=True)
    for bad in (dict(kind="transformer", input_shape=(4, 2), widths=(6, 8), heads=4, blocks=1),
                dict(kind="resmlp", input_shape=(4,), widths=(6, 8), blocks=0),
                dict(kind="resmlp", input_shape=(4,), widths=(6,), blocks=1),
                dict(kind="resnet", input_shape=(1, 4, 4), widths=(6,), blocks=1),  # resnet always has BatchNorm
                dict(kind="mlp", input_shape=(4,), widths=(6,), blocks=1)):
        with pytest.raises(SpecError):
            ArchSpec(num_classes=2, **bad)


@pytest.mark.parametrize("name,shape", [("mlp", (8, 8)), ("mlp-tanh", (40,)), ("cnn-bn", (8, 8)), ("cnn", (3, 32, 32)),
                                        ("cnn-bn", (40,)), ("rnn", (8, 8)), ("rnn-tanh", (40,)), ("gru-paper", (8, 8)),
                                        ("resmlp", (8, 8)), ("resnet", (8, 8)), ("transformer", (40,))])
def test_initial_state_equals_build_seeded(name, shape):
    """The one initialization path draws exactly what PyTorch's build() draws
    from the global RNG under the same seed, and build_seeded uses it."""
    from weightsim.archs import build, build_seeded, initial_state

    spec = arch_spec(name, shape, 3)
    for seed in (0, 2**62 + 7):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            want = build(spec).state_dict()
        for got in (initial_state(spec, seed), build_seeded(spec, seed).state_dict()):
            assert want.keys() == got.keys()
            assert all(torch.equal(want[k], got[k]) and want[k].dtype == got[k].dtype for k in want)


def test_arch_names_are_canonical_and_duplicates_refused():
    from weightsim.archs import canonical_name
    from weightsim import loader
    from weightsim.errors import SpecError

    assert [canonical_name(n) for n in ("mlp-relu", "gru-tanh", "cnn-paper-bn", "rnn-tanh")] == \
        ["mlp", "gru", "cnn-bn-paper", "rnn-tanh"]
    for bad in ("mlp-tanh-relu", "gru-relu", "mlp-bn", "mlp-mlp", "mlp-relu-relu"):
        with pytest.raises(SpecError):
            canonical_name(bad)
    assert loader.load({"archs": "mlp-relu,gru-tanh"}).archs == ("mlp", "gru")
    assert loader.load({"archs": ["mlp", " gru ", ""]}).archs == ("mlp", "gru")  # a TOML list: stripped, blanks out
    for archs in ("mlp,mlp-relu", "mlp,mlp", [1, 2]):
        with pytest.raises(SpecError):
            loader.load({"archs": archs})
