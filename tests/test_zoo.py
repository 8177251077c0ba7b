"""weightsim import: a zoo trained here with plain PyTorch (not weightsim) and
saved with safetensors under its own tensor names is imported, analysed with
``analyze --sweep`` alone, and agrees with the chain rule applied to the same
networks in memory; a hidden-unit symmetry applied before saving changes
nothing. Bad manifests exit 2 with one line and write nothing."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import nn

from flows.cli import main
from weightsim import chain, htt, representations, tables
from weightsim.archs import ArchSpec

pytestmark = pytest.mark.usefixtures("prefect_api")

PROBLEMS = [(0, 1), (2, 3), (4, 5), (6, 7)]
SEEDS = 10
SPEC = {"kind": "mlp", "input_shape": [64], "widths": [16, 12], "num_classes": 2}
NAMES = {"0.weight": "layers.0.weight", "0.bias": "layers.0.bias", "2.weight": "layers.1.weight",
         "2.bias": "layers.1.bias", "4.weight": "out.weight", "4.bias": "out.bias"}


def _train_zoo() -> list[tuple[str, int, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(problem, seed, trained and initial state dicts with torch.nn.Sequential
    names) per net: full-batch Adam on the digits of each pair."""
    d = load_digits()
    x = d.images.reshape(len(d.images), -1) / 16.0
    x = torch.tensor((x - x.mean()) / x.std(), dtype=torch.float32)
    y = torch.tensor(d.target)
    zoo = []
    for a, b in PROBLEMS:
        mask = (y == a) | (y == b)
        xs, ys = x[mask], (y[mask] == b).long()
        for seed in range(SEEDS):
            torch.manual_seed(1000 * a + seed)
            net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 2))
            init = {k: v.detach().clone() for k, v in net.state_dict().items()}
            opt = torch.optim.Adam(net.parameters(), lr=0.01)
            for _ in range(60):
                opt.zero_grad()
                nn.functional.cross_entropy(net(xs), ys).backward()
                opt.step()
            zoo.append((f"{a}v{b}", seed, {k: v.detach().clone() for k, v in net.state_dict().items()}, init))
    return zoo


def _symmetry(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The same function: hidden units permuted and positively rescaled."""
    g = torch.Generator().manual_seed(seed)
    s = dict(state)
    for layer, nxt in (("0", "2"), ("2", "4")):
        n = s[f"{layer}.weight"].shape[0]
        perm, scale = torch.randperm(n, generator=g), torch.rand(n, generator=g) * 3 + 0.25
        s[f"{layer}.weight"] = s[f"{layer}.weight"][perm] * scale[:, None]
        s[f"{layer}.bias"] = s[f"{layer}.bias"][perm] * scale
        s[f"{nxt}.weight"] = s[f"{nxt}.weight"][:, perm] / scale
    return s


def _write_zoo(folder, zoo, transform=lambda s, i: s, with_init: bool = False) -> str:
    os.makedirs(folder / "nets")
    with open(folder / "zoo.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "problem", "seed", *(["init"] if with_init else [])])
        for i, (problem, seed, state, init) in enumerate(zoo):
            save_file(transform(state, i), str(folder / "nets" / f"{problem}-{seed}.safetensors"))
            if with_init:
                save_file(init, str(folder / "nets" / f"{problem}-{seed}-init.safetensors"))
            w.writerow([f"nets/{problem}-{seed}.safetensors", problem, seed,
                        *([f"nets/{problem}-{seed}-init.safetensors"] if with_init else [])])
    (folder / "spec.json").write_text(json.dumps(SPEC))
    (folder / "names.json").write_text(json.dumps(NAMES))
    return str(folder / "zoo.csv")


@pytest.fixture(scope="module")
def zoo():
    return _train_zoo()


def _import(folder, store, sweep, capsys, manifest=None, spec=None, names="names.json"):
    args = ["import", "--manifest", manifest or str(folder / "zoo.csv"), "--spec", spec or str(folder / "spec.json"),
            "--dataset", "digits", "--sweep", sweep, "--store", store]
    code = main(args + (["--names", str(folder / names)] if names else []))
    return code, capsys.readouterr()


def test_imported_zoo_is_analysed_like_the_nets_in_memory(zoo, tmp_path, capsys):
    store = str(tmp_path / "store")
    summaries, chains = {}, {}
    for sweep, transform in (("zoo", lambda s, i: s), ("zoo-sym", lambda s, i: _symmetry(s, i))):
        folder = tmp_path / sweep
        _write_zoo(folder, zoo, transform, with_init=sweep == "zoo")  # with the initializations: a control
        code, out = _import(folder, store, sweep, capsys)
        assert code == 0, out.err
        assert f"imported {len(zoo)} networks" in out.out and "as arch mlp" in out.out
        assert main(["analyze", "--sweep", sweep, "--store", store]) == 0  # nothing else needed
        assert main(["report", "--sweep", sweep, "--store", store]) == 0
        summaries[sweep] = json.load(open(f"{store}/reports/digits/{sweep}/summary.json"))["archs"]["mlp"]
        record = json.load(open(f"{store}/sweeps/digits/{sweep}.json"))
        uris = [f"{store}/{k}" for k in record["runs"]["mlp"]]
        p = representations.plan(store, "mlp", uris)
        chains[sweep] = representations.load(store, p, names=("chain", "raw", *(("untrained",) if sweep == "zoo"
                                                                                else ())))
    e = summaries["zoo"]
    assert e["n_runs"] == len(zoo) and e["n_problems"] == len(PROBLEMS) and e["mean_test_accuracy"] > 0.9
    assert e["training"]["engine"] == "imported" and e["leak"] is False  # the initializations are at chance
    assert e["htt"]["untrained"]["p_permutation"] > 0.01 and e["over_time"]["epochs"] == [0, 1]
    bare = summaries["zoo-sym"]  # no initializations given: no control, and the report says so
    assert "untrained" not in bare["htt"] and bare["leak"] is None and "no untrained control" in bare["note_control"]
    md = open(f"{store}/reports/digits/zoo-sym/report.md").read()
    assert "no untrained control" in md and "none (no epoch 0)" in md
    for sweep in ("zoo", "zoo-sym"):  # imported networks have no training epochs: none is shown
        md = open(f"{store}/reports/digits/{sweep}/report.md").read()
        assert "| first sig. epoch | — (imported) |" in md and "| epochs | — |" in md and "| engine | imported |" in md
        assert "significant epoch" not in md and "over training" not in md.lower()

    # the chain rule on the same networks in memory (weightsim's names, in the manifest's order)
    ss = chains["zoo"]
    order = {(p, s): i for i, (p, s, *_) in enumerate(zoo)}
    rows = [order[p, s] for p, s in zip(ss.runs.problem, ss.runs.seed)]
    mapped = [{NAMES[k]: v for k, v in zoo[i][2].items()} for i in rows]
    untrained = [{NAMES[k]: v for k, v in zoo[i][3].items()} for i in rows]
    expected = chain.features_stack(chain.stack(mapped, ArchSpec.from_dict(SPEC)), ArchSpec.from_dict(SPEC))
    np.testing.assert_allclose(ss.get("chain"), expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ss.get("untrained"), chain.features_stack(chain.stack(untrained, ArchSpec.from_dict(
        SPEC)), ArchSpec.from_dict(SPEC)).numpy(), rtol=1e-5, atol=1e-6)
    labels = ss.runs.problem.to_numpy()
    direct = htt.hypothesis_training_testing(expected.numpy(), labels, n_permutations=200)
    assert e["htt"]["chain"]["accuracy"] == pytest.approx(direct.accuracy)
    assert e["decision"].startswith("reject H0")

    # a hidden-unit permutation and rescaling before saving: new files and run ids, the same features and test
    sym = chains["zoo-sym"]
    assert set(sym.runs.run_id).isdisjoint(ss.runs.run_id)
    np.testing.assert_allclose(sym.get("chain"), ss.get("chain"), rtol=1e-4, atol=1e-5)
    for key in ("accuracy", "p_binomial"):
        assert summaries["zoo-sym"]["htt"]["chain"][key] == pytest.approx(e["htt"]["chain"][key])
    assert not np.allclose(sym.get("raw"), ss.get("raw"), atol=1e-3)  # while the raw weights did change
    meta = tables.read_meta(sym.runs.uri[0])["imported"]
    assert meta["file"].startswith("nets/") and len(meta["file_sha256"]) == 64 and meta["names"] == NAMES


def test_bad_manifests_exit_2_in_one_line_and_write_nothing(zoo, tmp_path, capsys):
    folder = tmp_path / "zoo"
    _write_zoo(folder, zoo[:8])
    store = str(tmp_path / "store")
    bad_spec = folder / "wide.json"
    bad_spec.write_text(json.dumps({**SPEC, "widths": [20, 12]}))
    missing = folder / "missing.csv"
    missing.write_text("file,problem\nnets/0v1-0.safetensors,0v1\nnets/nope.safetensors,0v1\n")
    columns = folder / "columns.csv"
    columns.write_text("path,problem\nnets/0v1-0.safetensors,0v1\n")
    half = folder / "half.csv"
    half.write_text("file,problem,init\nnets/0v1-0.safetensors,0v1,nets/0v1-1.safetensors\nnets/0v1-1.safetensors,0v1,\n")
    pickle = folder / "pickle.csv"
    (folder / "nets" / "net.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 64)  # a pickle, not safetensors
    pickle.write_text("file,problem\nnets/net.safetensors,0v1\n")
    cases = [
        (dict(spec=str(bad_spec)), "tensor '0.weight' has shape (16, 64), the spec's 'layers.0.weight' has (20, 64)"),
        (dict(names=None), "tensor '0.bias' cannot be mapped onto a parameter of the spec"),
        (dict(manifest=str(missing)), "nope.safetensors does not exist"),
        (dict(manifest=str(columns)), "needs the columns file and problem"),
        (dict(manifest=str(pickle)), "is not a safetensors file"),
        (dict(manifest=str(half)), "line 3: init is empty"),
    ]
    for kwargs, message in cases:
        code, out = _import(folder, store, "bad", capsys, **kwargs)
        assert code == 2 and message in out.err and out.err.count("\n") == 1, out.err
    assert not os.path.exists(f"{store}/weights") and not os.path.exists(f"{store}/sweeps")
    code, out = _import(folder, store, "good", capsys)
    assert code == 0 and "imported 8 networks (8 new)" in out.out, out.err
    code, out = _import(folder, store, "good", capsys)  # again: the same sweep, nothing written twice
    assert code == 0 and "imported 8 networks (0 new)" in out.out, out.err
    assert main(["analyze", "--sweep", "good", "--store", store, "--archs", "cnn"]) == 2  # a recorded sweep's archs
    assert "recorded with other archs" in capsys.readouterr().err
