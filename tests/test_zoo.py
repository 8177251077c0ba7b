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


def _train_zoo(shared: bool = False) -> list[tuple[str, int, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(problem, seed, trained and initial state dicts with torch.nn.Sequential
    names) per net: full-batch Adam on the digits of each pair; ``shared``:
    seed s of every problem starts from the same initialization."""
    d = load_digits()
    x = d.images.reshape(len(d.images), -1) / 16.0
    x = torch.tensor((x - x.mean()) / x.std(), dtype=torch.float32)
    y = torch.tensor(d.target)
    zoo = []
    for a, b in PROBLEMS:
        mask = (y == a) | (y == b)
        xs, ys = x[mask], (y[mask] == b).long()
        for seed in range(SEEDS):
            torch.manual_seed(seed if shared else 1000 * a + seed)
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
    assert e["shared_inits"] == {"checked": True, "groups": 0, "runs": 0, "across_problems": 0, "problems": [],
                                 "grouped": False}  # independent inits: nothing grouped, nothing to say
    bare = summaries["zoo-sym"]  # no initializations given: no control, and the report says so
    assert "untrained" not in bare["htt"] and bare["leak"] is None and "no untrained control" in bare["note_control"]
    assert not bare["shared_inits"]["checked"] and not bare["shared_inits"]["grouped"]
    md = open(f"{store}/reports/digits/zoo-sym/report.md").read()
    assert "no untrained control" in md and "none (no epoch 0)" in md
    assert "whether runs share initializations could not be checked" in md
    assert "initializations" not in open(f"{store}/reports/digits/zoo/report.md").read()
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


def test_a_zoo_whose_problems_share_inits_is_split_by_init(tmp_path, capsys):
    """Seed s of every problem starts from one init: the analysis finds the
    shared inits from the epoch-0 rows, keeps each on one side of the HTT
    split and says so in the report; the ungrouped split would put a held-out
    run's twins of the other problems on the training side."""
    from weightsim import inits
    from weightsim.store import open_store

    zoo, store = _train_zoo(shared=True), str(tmp_path / "store")
    _write_zoo(tmp_path / "shared", zoo, with_init=True)
    assert _import(tmp_path / "shared", store, "shared", capsys)[0] == 0
    assert main(["analyze", "--sweep", "shared", "--store", store]) == 0
    assert main(["report", "--sweep", "shared", "--store", store]) == 0
    e = json.load(open(f"{store}/reports/digits/shared/summary.json"))["archs"]["mlp"]
    problems = sorted(f"{a}v{b}" for a, b in PROBLEMS)
    s = e["shared_inits"]
    assert (s["groups"], s["runs"], s["across_problems"], s["problems"], s["grouped"]) == \
        (SEEDS, len(zoo), SEEDS, problems, True)
    md = open(f"{store}/reports/digits/shared/report.md").read()
    assert f"design confound: {len(zoo)} runs share {SEEDS} initializations" in md and "split was grouped" in md
    assert ", ".join(problems) in md and "cannot be rejected" not in md  # 24^6 labellings: the floor allows it
    assert e["efficiency"]["sizes"] == [] and "shared initializations" in e["efficiency"]["note"]

    uris = [f"{store}/{k}" for k in json.load(open(f"{store}/sweeps/digits/shared.json"))["runs"]["mlp"]]
    ss = representations.load(store, representations.plan(store, "mlp", uris), names=("chain", "untrained"))
    init = inits.labels(open_store(store), ss.runs.uri.tolist())
    labels = ss.runs.problem.to_numpy()
    assert len(np.unique(init)) == SEEDS and all(len(np.unique(labels[init == g])) == len(PROBLEMS)
                                                 for g in np.unique(init))
    _, codes = np.unique(labels, return_inverse=True)
    train, _ = htt.split_per_problem(codes, 0.6, 0, htt.init_blocks(init))
    assert all(len(np.unique(train[init == g])) == 1 for g in np.unique(init))  # no init straddles the split
    for name in ("chain", "untrained"):
        grouped = htt.hypothesis_training_testing(ss.get(name), labels, n_permutations=200, inits=init)
        assert e["htt"][name]["accuracy"] == pytest.approx(grouped.accuracy)
        assert e["htt"][name]["p_permutation"] == pytest.approx(grouped.p_permutation)
    assert e["decision"].startswith("reject H0") and e["leak"] is False


def test_bad_manifests_exit_2_in_one_line_and_write_nothing(zoo, tmp_path, capsys):
    folder = tmp_path / "zoo"
    _write_zoo(folder, zoo[:4] + zoo[SEEDS:SEEDS + 4])
    other = "nets/2v3-0.safetensors,2v3\nnets/2v3-1.safetensors,2v3\n"
    store = str(tmp_path / "store")
    bad_spec = folder / "wide.json"
    bad_spec.write_text(json.dumps({**SPEC, "widths": [20, 12]}))
    missing = folder / "missing.csv"
    missing.write_text("file,problem\nnets/0v1-0.safetensors,0v1\nnets/nope.safetensors,0v1\n" + other)
    columns = folder / "columns.csv"
    columns.write_text("path,problem\nnets/0v1-0.safetensors,0v1\n")
    half = folder / "half.csv"
    half.write_text("file,problem,init\nnets/0v1-0.safetensors,0v1,nets/0v1-1.safetensors\nnets/0v1-1.safetensors,0v1,\n")
    pickle = folder / "pickle.csv"
    (folder / "nets" / "net.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 64)  # a pickle, not safetensors
    pickle.write_text("file,problem\nnets/net.safetensors,0v1\nnets/0v1-0.safetensors,0v1\n" + other)
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


def test_hostile_imports_are_refused_before_anything_is_written(zoo, tmp_path, capsys):
    """Each manifest, spec or mapping below is refused with exit 2 and one
    line, and the store stays empty: the whole import is checked first."""
    folder = tmp_path / "zoo"
    _write_zoo(folder, zoo[:3] + zoo[SEEDS:SEEDS + 3])
    good = "nets/0v1-0.safetensors,0v1\nnets/0v1-1.safetensors,0v1\nnets/2v3-0.safetensors,2v3\n"
    nets = folder / "nets"
    os.mkfifo(nets / "fifo.safetensors")
    os.symlink(zoo_out := tmp_path / "outside.safetensors", nets / "link.safetensors")
    zoo_out.write_bytes((nets / "2v3-2.safetensors").read_bytes())
    (nets / "copy.safetensors").write_bytes((nets / "2v3-2.safetensors").read_bytes())
    save_file({**{k: v for k, v in zoo[0][2].items()}, "4.bias": torch.zeros(2, dtype=torch.int64)},
              str(nets / "ints.safetensors"))
    os.mkfifo(folder / "fifo.json")
    (folder / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    (folder / "float-widths.json").write_text(json.dumps({**SPEC, "widths": [16.5, 12]}))
    (folder / "many-widths.json").write_text(json.dumps({**SPEC, "widths": [4] * 100_000}))
    manifests = {
        "long-seed": ("file,problem,seed\nnets/0v1-0.safetensors,0v1," + "9" * 40 + "\nnets/0v1-1.safetensors,0v1,1\n"
                      "nets/2v3-0.safetensors,2v3,0\nnets/2v3-1.safetensors,2v3,1\n", "is not a whole number from 0 to"),
        "orders": (good + "nets/2v3-1.safetensors,3v2\n", "has the classes of problem 2v3 in another order"),
        "same-class": (good + "nets/2v3-1.safetensors,4v4\n", "a class appears more than once"),
        "one-file-twice": ("file,problem,seed\nnets/0v1-0.safetensors,0v1,0\nnets/0v1-0.safetensors,0v1,1\n"
                           "nets/2v3-0.safetensors,2v3,0\nnets/2v3-1.safetensors,2v3,1\n", "is listed twice"),
        "same-network": (good + "nets/2v3-2.safetensors,2v3\nnets/copy.safetensors,2v3\n",
                         "holds the same network as"),
        "one-problem": ("nets/0v1-0.safetensors,0v1\nnets/0v1-1.safetensors,0v1\n", "at least 2 problems"),
        "one-seed": (good, "at least 2 problems with at least 2 networks"),
        "link-out": (good + "nets/link.safetensors,2v3\n", "leads out of the manifest's folder"),
        "fifo-entry": (good + "nets/fifo.safetensors,2v3\n", "not a regular file"),
        "ints": (good.replace("0v1-0", "ints") + "nets/2v3-1.safetensors,2v3\n", "holds torch.int64"),
        "nul": (good + "nets/a\0b.safetensors,2v3\n", "control characters"),
    }
    cases = [(dict(manifest="/dev/zero"), "not a regular file"),
             (dict(spec=str(folder / "fifo.json")), "not a regular file"),
             (dict(spec="/dev/zero"), "not a regular file"),
             (dict(spec=str(folder / "deep.json")), "nested too deeply"),
             (dict(spec=str(folder / "float-widths.json")), "widths must be 1 to 64 whole numbers"),
             (dict(spec=str(folder / "many-widths.json")), "widths must be 1 to 64 whole numbers"),
             (dict(names="../../../../../../dev/zero"), "not a regular file")]
    for name, (text, message) in manifests.items():
        path = folder / f"{name}.csv"
        path.write_text(text if text.startswith("file,") else "file,problem\n" + text)
        cases.append((dict(manifest=str(path)), message))
    store = str(tmp_path / "store")
    for kwargs, message in cases:
        code, out = _import(folder, store, "hostile", capsys, **kwargs)
        assert code == 2 and message in out.err and out.err.count("\n") == 1, (kwargs, out.err)
    assert not os.path.exists(f"{store}/weights") and not os.path.exists(f"{store}/sweeps")


def test_a_manifest_saved_as_csv_utf8_by_a_spreadsheet_is_read(tmp_path):
    from weightsim.zoo import read_manifest

    (tmp_path / "bom.csv").write_bytes("\ufefffile,problem\na.safetensors,0v1\nb.safetensors,0v1\n"
                                       "c.safetensors,2v3\nd.safetensors,2v3\n".encode())
    assert [m.seed for m in read_manifest(str(tmp_path / "bom.csv"))] == [0, 1, 0, 1]


def test_resnet_with_torchvision_names_imports_with_a_mapping(tmp_path, capsys):
    """A ResNet saved under torchvision-style names (conv1, bn1, layerN.j.*, fc) comes in through a names
    mapping; a symmetric copy (streams, blocks, BatchNorm scales) gets other run ids and the same features."""
    import re

    from weightsim.archs import build_seeded, param_shapes

    spec = ArchSpec("resnet", (1, 8, 8), (4, 6), 2, batchnorm=True, blocks=1)
    ours = {re.sub(r"^stages\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.",
                   n.replace("stem_bn.", "bn1.").replace("stem.", "conv1.").replace("out.", "fc.")): n
            for n in param_shapes(spec)}
    assert "layer2.0.downsample.1.running_var" in ours and "conv1.weight" in ours
    nets = [(p, s, build_seeded(spec, 10 * i + s).state_dict()) for i, p in enumerate(("0v1", "2v3")) for s in range(2)]
    tv = {v: k for k, v in ours.items()}
    features = {}
    for sweep, move in (("tv", lambda sd, i: sd), ("tv-sym", lambda sd, i: chain.random_symmetry(sd, spec, i))):
        folder = tmp_path / sweep
        os.makedirs(folder / "nets")
        with open(folder / "zoo.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "problem", "seed"])
            for i, (problem, seed, sd) in enumerate(nets):
                save_file({tv[k]: v.contiguous() for k, v in move(sd, i).items()},
                          str(folder / "nets" / f"{problem}-{seed}.safetensors"))
                w.writerow([f"nets/{problem}-{seed}.safetensors", problem, seed])
        (folder / "spec.json").write_text(json.dumps(spec.to_dict()))
        (folder / "names.json").write_text(json.dumps(ours))
        code, out = _import(folder, str(tmp_path / "store"), sweep, capsys)
        assert code == 0, out.err
        assert "as arch resnet" in out.out
        record = json.load(open(f"{tmp_path}/store/sweeps/digits/{sweep}.json"))
        runs = [tables.read_run(f"{tmp_path}/store/{k}") for k in record["runs"]["resnet"]]
        features[sweep] = {(r.meta["problem"], r.meta["seed"]): chain.features(r.state_dict, spec) for r in runs}
        if sweep == "tv":
            for r in runs:
                sd = next(n for p, s, n in nets if (p, s) == (r.meta["problem"], r.meta["seed"]))
                assert all(torch.equal(r.state_dict[k], sd[k]) for k in sd)
    assert features["tv"].keys() == features["tv-sym"].keys()
    for key, f in features["tv"].items():
        np.testing.assert_allclose(features["tv-sym"][key], f, rtol=1e-4, atol=1e-5)
