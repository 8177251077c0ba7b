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
    assert main(["train", "--archs", "mlp", "--problems", "3", "--seeds", "3", "--epochs", "2", "--permutations",
                 "99", "--store", store]) == 0
    out = capsys.readouterr().out
    name = out.split("sweep: ", 1)[1].split()[0]
    assert name.startswith("mlp-p3-s3-e2-")
    record = json.load(open(f"{store}/sweeps/digits/{name}.json"))
    assert record["dataset"]["name"] == "digits" and len(record["runs"]["mlp"]) == 9
    assert record["options"]["epochs"] == 2 and "store" not in record["options"]
    assert main(["sweeps", "--store", store]) == 0
    assert _listed(capsys.readouterr().out)[name] == {"SWEEP": name, "DATASET": "digits", "ARCHS": "mlp",
                                                      "TRAINED": "9/9", "ANALYSED": "no", "CREATED": record["created"]}
    from flows.server import drain

    drain()  # logs travel to the API in batches
    flow_runs, task_runs, logs, runs_table = asyncio.run(_dashboard(name))
    assert flow_runs and all({"dataset:digits", f"sweep:{name}"} <= set(r.tags) for r in flow_runs)
    assert task_runs and all(f"sweep:{name}" in r.tags for r in task_runs)
    trained = [m for m in logs if "test accuracy" in m and "final loss" in m]
    assert len(trained) == 9, logs[:20]
    assert all(" seed " in m and " s for the " in m for m in trained)  # one line per run
    rows = runs_table.data if isinstance(runs_table.data, list) else json.loads(runs_table.data)
    assert len(rows) == 9 and {"run_id", "problem", "seed", "test_accuracy", "table"} <= set(rows[0])
    assert main(["analyze", "--sweep", name, "--store", store]) == 0
    assert main(["report", "--sweep", name, "--store", store]) == 0
    assert f"reports/digits/{name}/report.html" in capsys.readouterr().out
    assert main(["sweeps", "--store", store]) == 0
    assert _listed(capsys.readouterr().out)[name]["ANALYSED"] == "yes"
    # training options belong to the record: a different one is refused, an analysis option is not
    assert main(["analyze", "--sweep", name, "--epochs", "3", "--store", store]) == 2
    assert "recorded with other epochs" in capsys.readouterr().err
    assert main(["train", "--sweep", name, "--store", store]) == 0
    assert "0 trained, 9 already there" in capsys.readouterr().out
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
    from weightsim.config import make_options

    store = tmp_path / "s"
    for command in ("analyze", "report"):
        assert main([command, "--sweep", "ui-demo", "--store", str(store)]) == 2
        assert capsys.readouterr().err == (
            f"weightsim: error: no sweep 'ui-demo' in store {store}: it holds no sweeps (give the --store that holds "
            f"it, or record one with 'weightsim train' or 'weightsim run')\n")
    opts = make_options({"archs": "mlp", "problems": 2, "seeds": 2, "epochs": 1, "store": str(store),
                         "sweep": "ui-demo"})
    catalog.save(opts.store, "ui-demo", opts.to_dict(), *opts.plan())
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
