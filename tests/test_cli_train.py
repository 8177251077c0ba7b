import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from weightsim import query, tables
from weightsim.archs import build
from flows.cli import main

pytestmark = pytest.mark.usefixtures("prefect_api")  # runs flows: the session's Prefect server

EXE = os.path.join(os.path.dirname(sys.executable), "weightsim")


def test_train_writes_24_tables_reads_back_and_skips_rerun(digits_store, capsys):
    uris = tables.list_runs(str(digits_store))
    assert len(uris) == 24
    df = query.query(str(digits_store))
    acc = df.groupby("arch").test_accuracy.mean()
    assert acc["mlp"] >= 0.9 and acc["cnn"] >= 0.9, acc
    for u in uris:
        run = tables.read_run(u)
        model = build(run.spec)
        model.load_state_dict(run.state_dict)
        for k, v in model.state_dict().items():
            assert torch.equal(v, run.state_dict[k])
    before = {u: (os.stat(u).st_mtime_ns, open(u, "rb").read()) for u in uris}
    assert main(["train", "--partial", "--dataset", "digits", "--archs", "mlp,cnn,rnn,gru", "--problems", "3",
                 "--seeds", "2", "--epochs", "5", "--store", str(digits_store)]) == 0
    assert "0 trained, 24 already there" in capsys.readouterr().out
    assert before == {u: (os.stat(u).st_mtime_ns, open(u, "rb").read()) for u in uris}


def test_corrupt_table_is_retrained(tmp_path):
    args = ["train", "--partial", "--archs", "mlp", "--problems", "2", "--seeds", "2", "--epochs", "1", "--store",
            str(tmp_path)]
    assert main(args) == 0
    uri = sorted(tables.list_runs(str(tmp_path)))[0]
    good = tables.read_run(uri).state_dict
    data = open(uri, "rb").read()
    open(uri, "wb").write(data[:-20])
    assert main(args) == 0
    again = tables.read_run(uri).state_dict  # retrained and valid again: by the same batched engine, alone
    # instead of beside another seed, which moves MLP weights by float32 rounding only
    assert all(torch.allclose(good[k], again[k], rtol=0, atol=1e-6) for k in good)


@pytest.mark.parametrize("args,msg", [
    (["train", "--dataset", "nosuch"], "unknown dataset"),
    (["train", "--archs", "transformers"], "unknown arch"),
    (["train", "--seeds", "0"], "--seeds must be between 1 and"),
    (["train", "--problems", "99"], "problems"),
    (["train", "--epochs", "x"], "invalid int value"),
    (["train", "--store", "ftp://x/y"], "unsupported store"),
    (["train", "--config", "/nonexistent.toml"], "config file /nonexistent.toml does not exist"),
    (["train", "--checkpoints", "0,abc"], "bad checkpoint"),
    (["nosuchcommand"], "invalid choice"),
    (["train", "--device", "tpu"], "--device"),
    (["train", "--seed-chunk", "0"], "--seed-chunk"),
    (["train", "--lr", "-1"], "--lr must be > 0"),
    (["train", "--engine", "fast"], "--engine must be batched or loop"),
    (["train", "--precision", "fp8"], "--precision must be fp32, tf32 or bf16"),
    (["train", "--engine", "loop", "--precision", "bf16"], "needs --engine batched"),
    (["train", "--classes-per-problem", "11", "--problem-kind", "groups"], "k <= 10"),
    (["train", "--classes-per-problem", "3"], "add --problem-kind groups"),
    (["train", "--problem-kind", "ovr", "--problems", "11"], "between 1 and 10 one-vs-rest"),
    (["train", "--problem-kind", "rest"], "--problem-kind must be pairs, groups or ovr"),
    (["train", "--dataset", "/nonexistent/data.npz"], "dataset file not found"),
    (["train", "--problems", "2", "--seeds", "4"], "cannot reject H0 at α = 0.01: its smallest p-value is 0.171 "
                                                   "(binomial floor 0.0625, 6 distinct training labellings for 200 "
                                                   "permutations); use at least --seeds 11 with 2 problems"),
    (["train", "--problems", "3", "--seeds", "4"], "use at least --seeds 5 with 3 problems"),
    (["run", "--dataset", "nosuch"], "unknown dataset"),
    (["run", "--runner", "spark"], "unknown runner"),
    (["train", "--runner", "pool:a b"], "not a work pool name"),
    (["worker", "--pool", "p", "--cpus", "0"], "--cpus must be between 1 and 1024"),
    (["worker", "--pool", "p", "--gpus", "0", "--cpus", "2"], "not allowed with argument --gpus"),
    (["analyze", "--permutations", "0"], "--permutations must be between 1 and"),
    (["analyze", "--problems", "2"], "run 'weightsim train'"),
    (["report", "--archs", ","], "--archs is empty"),
    (["report", "--dataset", "digits"], "no analysis of sweep '"),
    (["watch"], "required"),
    (["watch", "--store", "ftp://x/y"], "unsupported store"),
    (["watch", "--store", "s", "--overrides", "[1]"], "overrides must be a JSON object of pipeline parameters (got list)"),
    (["watch", "--store", "s", "--overrides", '{"seeds": 0}'], "--seeds must be between 1 and"),
    (["watch", "--store", "s", "--overrides", '{"dataset": "x"}'], "overrides cannot set dataset"),
    (["watch", "--store", "s", "--overrides", '{"sedes": 3}'], "unknown option(s) in arguments: sedes"),
    (["datasets", "--store", "ftp://x/y"], "unsupported store"),
    ([], "required"),
])
def test_bad_input_exit_2_one_line(args, msg, tmp_path):
    if "--store" not in args and args and args[0] in ("train", "run", "analyze", "report"):
        args = [*args, "--store", str(tmp_path / "s")]
    p = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert not list((tmp_path / "s").rglob("*.parquet")) if (tmp_path / "s").exists() else True


def test_config_file_and_cli_precedence(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('archs = ["mlp"]\nproblems = 2\nseeds = 3\nepochs = 1\n')
    assert main(["train", "--partial", "--config", str(cfg), "--seeds", "2", "--store", str(tmp_path / "s")]) == 0
    assert len(tables.list_runs(str(tmp_path / "s"))) == 4
    cfg.write_text("archs = [\n")
    assert main(["train", "--config", str(cfg)]) == 2


def test_datasets_command(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "mnist1d" in out and "synthetic" in out


def test_tables_differ_across_seeds(digits_store):
    df = query.query(str(digits_store))
    mlp = df[df.arch == "mlp"].uri.tolist()
    a, b = (tables.read_run(u).state_dict["out.weight"].numpy() for u in mlp[:2])
    assert not np.array_equal(a, b)


def test_one_vs_rest_preset_end_to_end(tmp_path, capsys):
    """The digits-ovr preset (one problem per digit against all others),
    scaled down on the command line: recorded as ovr, analysed, reported."""
    import json

    store = tmp_path / "s"
    assert main(["run", "--config", "digits-ovr", "--archs", "mlp", "--problems", "4", "--seeds", "3",
                 "--epochs", "2", "--permutations", "199", "--store", str(store)]) == 0
    record = json.loads((store / "sweeps/digits/digits-ovr.json").read_text())
    assert record["options"]["problem_kind"] == "ovr" and record["problems"] == ["0vrest", "1vrest", "2vrest", "3vrest"]
    df = query.query(str(store))
    assert sorted(df.problem.unique()) == ["0vrest", "1vrest", "2vrest", "3vrest"] and (df.test_accuracy > 0.7).all()
    report = (store / "reports/digits/digits-ovr/report.md").read_text()
    assert "**Problems.** 4 one-vs-rest problems" in report
    assert main(["analyze", "--sweep", "digits-ovr", "--store", str(store)]) == 0  # the record alone suffices
    assert main(["train", "--config", "no-such-preset", "--store", str(store)]) == 2
    assert "presets: digits-ovr" in capsys.readouterr().err


def test_an_unreachable_prefect_api_exits_2_in_one_line_before_anything_is_recorded(tmp_path, capsys, monkeypatch):
    from services import free_port

    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    for command in ("train", "analyze", "run", "watch"):
        argv = ["--archs", "mlp", "--problems", "2", "--seeds", "2"] if command != "watch" else []
        assert main([command, *argv, "--store", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "does not answer" in err and err.count("\n") == 1, err
    assert not (tmp_path / "sweeps").exists()
