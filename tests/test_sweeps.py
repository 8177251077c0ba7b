"""Sweeps as named objects: recorded at plan time, analysed and reported by
name alone, listed with their progress; bad sweeps refused before training."""
import asyncio
import json
import re

import pytest

from flows.cli import main

pytestmark = pytest.mark.usefixtures("prefect_api")  # runs flows: the session's Prefect server


def test_train_then_analyze_and_report_by_name_alone(tmp_path, capsys):
    store = str(tmp_path)
    assert main(["train", "--archs", "mlp", "--problems", "4", "--seeds", "3", "--epochs", "2", "--permutations",
                 "199", "--store", store]) == 0
    out = capsys.readouterr().out
    name = out.split("sweep: ", 1)[1].split()[0]
    assert name.startswith("mlp-p4-s3-e2-")
    record = json.load(open(f"{store}/sweeps/digits/{name}.json"))
    assert record["dataset"]["name"] == "digits" and len(record["runs"]["mlp"]) == 12
    assert record["options"]["epochs"] == 2 and "store" not in record["options"]
    assert main(["sweeps", "--store", store]) == 0
    assert _listed(capsys.readouterr().out)[name] == {"SWEEP": name, "DATASET": "digits", "ARCHS": "mlp",
                                                      "TRAINED": "12/12", "ANALYSED": "no", "CREATED": record["created"]}
    from flows.server import drain

    drain()  # logs travel to the API in batches
    flow_runs, task_runs, logs, runs_table = asyncio.run(_dashboard(name))
    assert flow_runs and all({"dataset:digits", f"sweep:{name}"} <= set(r.tags) for r in flow_runs)
    assert task_runs and all(f"sweep:{name}" in r.tags for r in task_runs)
    trained = [m for m in logs if "test accuracy" in m and "final loss" in m]
    assert len(trained) == 12, logs[:20]
    assert all(" seed " in m and " s for the " in m for m in trained)  # one line per run
    rows = runs_table.data if isinstance(runs_table.data, list) else json.loads(runs_table.data)
    assert len(rows) == 12 and {"run_id", "problem", "seed", "test_accuracy", "table"} <= set(rows[0])
    assert main(["analyze", "--sweep", name, "--store", store]) == 0
    assert main(["report", "--sweep", name, "--store", store]) == 0
    assert f"reports/digits/{name}/report.html" in capsys.readouterr().out
    assert main(["sweeps", "--store", store]) == 0
    assert _listed(capsys.readouterr().out)[name]["ANALYSED"] == "yes"
    # training options belong to the record: a different one is refused, an analysis option is not
    assert main(["analyze", "--sweep", name, "--epochs", "3", "--store", store]) == 2
    assert "recorded with other epochs" in capsys.readouterr().err
    assert main(["train", "--sweep", name, "--store", store]) == 0
    assert "0 trained, 12 already there" in capsys.readouterr().out
    # a name in use by another sweep is refused before anything trains
    assert main(["train", "--archs", "gru", "--problems", "2", "--seeds", "2", "--epochs", "1", "--sweep", name,
                 "--store", store]) == 2
    assert "was recorded with other archs, problems, seeds, epochs" in capsys.readouterr().err


def _listed(listing: str) -> dict[str, dict[str, str]]:
    """``weightsim sweeps``' table by sweep name, each row by column; the
    columns are aligned under the header."""
    header, *lines = listing.splitlines()
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    columns = header.split()
    rows = {}
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
        assert all(line[a - 2:a] == "  " for a in starts[1:]), line  # every cell starts under its header
        rows[cells[0]] = dict(zip(columns, cells))
    return rows


def test_unknown_sweeps_and_missing_analyses_are_named(tmp_path, capsys):
    from weightsim import catalog
    from weightsim import loader
    from weightsim.sweep import plan_sweep

    store = tmp_path / "s"
    for command in ("analyze", "report"):
        assert main([command, "--sweep", "ui-demo", "--store", str(store)]) == 2
        assert capsys.readouterr().err == (
            f"weightsim: error: no sweep 'ui-demo' in store {store}: it holds no sweeps (give the --store that holds "
            f"it, or record one with 'weightsim train' or 'weightsim run')\n")
    opts = loader.load({"archs": "mlp", "problems": 2, "seeds": 2, "epochs": 1, "store": str(store),
                        "sweep": "ui-demo"})
    catalog.save(opts.store, "ui-demo", opts.to_dict(), *plan_sweep(opts))
    for command in ("analyze", "report"):
        assert main([command, "--sweep", "ui-dmeo", "--store", str(store)]) == 2
        assert capsys.readouterr().err == (f"weightsim: error: no sweep 'ui-dmeo' in store {store}; recorded sweeps: "
                                           f"ui-demo\n")
    assert main(["report", "--sweep", "ui-demo", "--store", str(store)]) == 2
    assert capsys.readouterr().err == (f"weightsim: error: no analysis of sweep 'ui-demo' of digits in store {store}: "
                                       f"run 'weightsim analyze --sweep ui-demo --store {store}' first\n")


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "ui-dmeo"], "unknown dataset 'ui-dmeo': use one of digits, mnist1d, synthetic or a path/URI to "
                               ".npz, .parquet, IDX folder, CIFAR folder"),
    (["--archs", "mlp,cnx"], "unknown arch 'cnx': use mlp, cnn, rnn, gru, resmlp, resnet, transformer (optionally -tanh, -relu, -bn, -paper)"),
])
def test_unknown_dataset_or_arch_is_refused_before_torch_loads(tmp_path, argv, message):
    import subprocess
    import sys

    for command in ("train", "run", "analyze", "report"):
        code = ("import sys\nfrom flows.cli import main\nrc = main(sys.argv[1:])\n"
                "print('torch' in sys.modules, 'prefect' in sys.modules)\nsys.exit(rc)")
        p = subprocess.run([sys.executable, "-c", code, command, *argv, "--store", str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
        assert (p.returncode, p.stdout, p.stderr) == (2, "False False\n", f"weightsim: error: {message}\n")


async def _dashboard(sweep: str):
    """What the UI shows of a sweep: its flow runs and task runs (by tag),
    their logs, and its runs table."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterTags,
                                                LogFilter, LogFilterFlowRunId)

    async with get_client() as client:
        flow_runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(
            all_=[f"sweep:{sweep}"])))
        task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(
            all_=[f"sweep:{sweep}"])))
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[r.id for r in flow_runs])))
        table = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=[f"weightsim-runs-digits-{sweep}"])))
    return flow_runs, task_runs, [l.message for l in logs], table[0]


@pytest.mark.parametrize("argv,match", [
    (["--problems", "1"], "--problems 1: the hypothesis test tells problems apart"),
    (["--seeds", "1"], "--seeds 1: each problem needs at least 2 runs"),
    (["--permutations", "49"], "use at least 99"),
])
def test_sweeps_the_analysis_cannot_test_are_refused_before_training(tmp_path, capsys, argv, match):
    for command in ("train", "run"):
        assert main([command, "--archs", "mlp", *argv, "--store", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1
    assert not list(tmp_path.rglob("*.parquet"))


def _record(sweep: str, **change) -> dict:
    key = f"weights/dataset=digits/arch=mlp/problem=0v1/{'a' * 64}.parquet"
    return {"name": sweep, "options": {"epochs": 2}, "dataset": {"name": "digits", "fingerprint": "f" * 16},
            "problems": ["0v1"], "adaptations": [], "runs": {"mlp": [key]}, "created": "2026-01-01T00:00:00Z",
            **change}


@pytest.mark.parametrize("change,match", [
    (dict(name=None), "its name 'None' is not its file's name 'bad'"),
    (dict(name="other"), "its name 'other' is not its file's name"),
    (dict(options=None), "options must be an object"),
    (dict(runs={"mlp": 5}), "runs of 'mlp' must be a list"),
    (dict(runs={}), "runs must be an object"),
    (dict(dataset="digits"), "dataset must be an object"),
    (dict(runs={"gru": [f"weights/dataset=digits/arch=mlp/problem=0v1/{'a' * 64}.parquet"]}),
     "is listed under arch 'gru' but is not a table of it"),
    (dict(problems="0v1"), "problems must be a list of text"),
])
def test_a_hand_edited_sweep_record_is_refused_in_one_line_and_hides_no_other(tmp_path, capsys, change, match):
    from weightsim import catalog
    from weightsim.errors import WeightsimError

    folder = tmp_path / "sweeps" / "digits"
    folder.mkdir(parents=True)
    (folder / "good.json").write_text(json.dumps(_record("good")))
    (folder / "bad.json").write_text(json.dumps({k: v for k, v in _record("bad", **change).items() if v is not None}))
    assert catalog.load(str(tmp_path), "good")["name"] == "good"
    with pytest.raises(WeightsimError, match=r"bad\.json is not a sweep record: .*" + re.escape(match)):
        catalog.load(str(tmp_path), "bad")
    assert main(["sweeps", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("good ") and "0/1" in line for line in out)
    assert any(line.startswith("bad ") and "damaged" in line and match in line for line in out)


@pytest.mark.parametrize("name,match", [("trailing\n", "use letters, digits"), ("x" * 200, "at most 195")])
def test_a_sweep_name_that_cannot_name_its_record_is_refused_first(tmp_path, capsys, name, match):
    assert main(["train", "--sweep", name, "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("problems,seeds,fewest", [("2", "4", 11), ("3", "4", 5)])
def test_designs_that_cannot_reject_are_refused_before_training(tmp_path, capsys, problems, seeds, fewest):
    """run, train and analyze refuse in one line naming the fewest seeds
    that can; train --partial trains, with that line as a warning, and
    analyze still refuses the part alone."""
    args = ["--archs", "mlp", "--problems", problems, "--seeds", seeds, "--epochs", "1", "--store", str(tmp_path)]
    for command in ("run", "train", "analyze"):
        assert main([command, *args]) == 2
        err = capsys.readouterr().err
        assert f"--problems {problems} --seeds {seeds} cannot reject H0 at α = 0.01" in err and err.count("\n") == 1
        assert f"use at least --seeds {fewest} with {problems} problems" in err
    assert not list(tmp_path.rglob("*.parquet"))
    assert main(["train", "--partial", *args]) == 0
    assert f"warning: --problems {problems} --seeds {seeds} cannot reject H0" in capsys.readouterr().err
    assert len(list(tmp_path.rglob("*.parquet"))) == int(problems) * int(seeds)
    assert main(["analyze", *args]) == 2


def _npz(path, shift: float) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    means = 3 * rng.standard_normal((8, 6)) + shift
    y, y_test = np.arange(80) % 8, np.arange(40) % 8
    np.savez(path, x_train=means[y] + rng.standard_normal((80, 6)), y_train=y,
             x_test=means[y_test] + rng.standard_normal((40, 6)), y_test=y_test)


def test_a_dataset_changed_in_place_gets_a_sweep_of_its_own(tmp_path, capsys):
    """The default sweep name binds the dataset's fingerprint: the changed
    file gets a second sweep and report, the first stay; a name two
    datasets share is told apart by --dataset."""
    store, data = str(tmp_path / "s"), str(tmp_path / "mine.npz")
    args = ["--dataset", data, "--archs", "mlp", "--problems", "4", "--seeds", "3", "--epochs", "1", "--store", store]
    _npz(data, 0.0)
    assert main(["run", *args]) == 0
    _npz(data, 1.0)
    assert main(["run", *args]) == 0
    records = sorted((tmp_path / "s/sweeps/mine").glob("*.json"))
    assert len(records) == 2 and len({json.loads(r.read_text())["dataset"]["fingerprint"] for r in records}) == 2
    for r in records:
        assert (tmp_path / f"s/reports/mine/{r.stem}/report.html").exists()
    capsys.readouterr()
    other = str(tmp_path / "other.npz")
    _npz(other, 2.0)
    for path in (data, other):
        assert main(["train", *args[2:], "--dataset", path, "--sweep", "shared"]) == 0
    assert main(["analyze", "--sweep", "shared", "--store", store]) == 2
    assert "give --dataset" in capsys.readouterr().err
    assert main(["analyze", "--sweep", "shared", "--dataset", other, "--store", store]) == 0
    assert (tmp_path / "s/reports/other/shared/summary.json").exists()


def test_a_diverged_run_is_recorded_named_and_left_out(tmp_path, capsys, monkeypatch):
    """One run forced to diverge: recorded, not trained again, the analysis
    runs on the others and the report names it per problem."""
    from weightsim import sweep
    from weightsim.config import Options
    from weightsim.sweep import plan_sweep
    from weightsim.training import divergence

    args = ["--archs", "mlp", "--problems", "4", "--seeds", "3", "--epochs", "1", "--sweep", "div", "--store",
            str(tmp_path)]
    victim = plan_sweep(Options(archs="mlp", problems=4, seeds=3, epochs=1))[1][4]  # the second problem's seed 1
    real = sweep._train

    def train(keys, *rest):
        return [divergence(k, "loss is nan in epoch 1", 1, float("nan")) if k == victim else r
                for k, r in zip(keys, real(keys, *rest))]

    monkeypatch.setattr(sweep, "_train", train)
    assert main(["run", *args]) == 0
    e = json.load(open(tmp_path / "reports/digits/div/summary.json"))["archs"]["mlp"]
    assert e["n_runs"] == 11
    (record,) = e["diverged"][victim.problem.name]
    assert record["seed"] == victim.seed == 1 and record["epoch"] == 1 and record["run_id"] == victim.run_id
    report = (tmp_path / "reports/digits/div/report.md").read_text()
    assert f"{victim.problem.name}: seed 1 (epoch 1, loss nan)" in report
    monkeypatch.setattr(sweep, "_train", lambda *a: pytest.fail("a diverged run was trained again"))
    capsys.readouterr()
    assert main(["train", "--sweep", "div", "--store", str(tmp_path)]) == 0
    assert "0 trained" in capsys.readouterr().out
    assert main(["analyze", "--sweep", "div", "--store", str(tmp_path)]) == 0


def test_a_derived_sweep_name_too_long_for_its_record_is_refused_where_it_is_made():
    from weightsim import catalog
    from weightsim.config import Options
    from weightsim.errors import WeightsimError

    with pytest.raises(WeightsimError, match="sweep name"):
        catalog.named(Options(archs=("transformer-paper",) * 20), "f" * 16)
