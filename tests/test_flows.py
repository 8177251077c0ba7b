"""The flows on Prefect's embedded server, checked through the Prefect client."""
import asyncio
import os

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.sorting import FlowRunSort

from flows.pipeline import pipeline
from flows.train_sweep import task_runner, train_sweep
from weightsim import sweep, tables
from weightsim.config import Options
from weightsim.errors import StoreError

pytestmark = pytest.mark.usefixtures("prefect_api")  # runs flows: the session's Prefect server

TINY = dict(archs="mlp,gru", problems=4, seeds=3, epochs=2, permutations=199, sweep="tiny")


def _run(coro):
    return asyncio.run(coro)


async def _flow_runs(name_like, store=None):
    """Flow runs named like ``name_like`` (latest first), of ``store`` only if given
    (other test modules share the server and run flows of the same names)."""
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=name_like)),
                                           sort=FlowRunSort.START_TIME_DESC)
    if store is None:
        return runs

    def store_of(run):
        params = run.parameters or {}
        return (params.get("options") or params).get("store")

    return [r for r in runs if store_of(r) == store]


async def _task_runs(flow_run_id):
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    async with get_client() as client:
        return await client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])))


async def _artifacts(key):
    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("pipeline"))
    uris = pipeline(**TINY, store=store, seed_chunk=2)
    return store, uris


def test_pipeline_end_to_end_through_the_api(pipeline_store):
    store, uris = pipeline_store
    assert os.path.exists(uris["html"]) and os.path.exists(uris["summary"])
    runs = _run(_flow_runs("pipeline-digits-mlp+gru", store))
    assert runs and runs[0].state.is_completed()
    sweeps = _run(_flow_runs("train-digits-mlp+gru", store))
    assert sweeps[-1].parent_task_run_id is not None  # a subflow of the pipeline
    names = sorted(t.name for t in _run(_task_runs(sweeps[-1].id)))
    assert len(names) == 2 * 4 * 2  # arch × problem × seed-chunks of 2 (seeds 0-1, 2)
    assert names[0].startswith("train-gru-digits-") and names[-1].startswith("train-mlp-digits-")
    assert any(n.endswith("-seeds0-1") for n in names)
    assert any(n.endswith("-seeds2-2") for n in names)
    assert all(t.state.is_completed() for t in _run(_task_runs(sweeps[-1].id)))
    assert {"dataset:digits", "arch:mlp", "arch:gru"} <= {t for r in _run(_task_runs(sweeps[-1].id)) for t in r.tags}
    report = _run(_artifacts("weightsim-report-digits-tiny"))
    assert report and report[0].type == "markdown" and "data:image/png;base64," in report[0].data
    table = _run(_artifacts("weightsim-htt-digits-tiny"))
    assert table and table[0].type == "table" and "untrained" in str(table[0].data)
    link = _run(_artifacts("weightsim-link-digits-tiny"))
    assert link and "report.html" in str(link[0].data)
    progress = _run(_artifacts("weightsim-progress-digits-tiny"))
    assert progress and progress[0].type == "progress" and float(progress[0].data) == 100.0


def test_rerun_trains_nothing(pipeline_store):
    store, _ = pipeline_store
    before = {u: os.stat(u).st_mtime_ns for u in tables.list_runs(store)}
    result = train_sweep(Options(**TINY, store=store).to_dict(), seed_chunk=2)
    assert result["trained"] == 0 and sum(map(len, result["runs"].values())) == len(before) == 24
    assert before == {u: os.stat(u).st_mtime_ns for u in tables.list_runs(store)}
    rerun = _run(_flow_runs("train-digits-mlp+gru", store))[0]  # the latest: this rerun
    assert [t.name for t in _run(_task_runs(rerun.id)) if t.name.startswith("train-")] == []  # no training task


def test_a_failed_arch_retries_alone_and_two_sweeps_keep_two_reports(pipeline_store, monkeypatch):
    """The analysis of one arch fails once (a storage fault): only that arch's
    task runs again. Analysing a second sweep of the same dataset (mlp only)
    leaves the first sweep's report in place; the index lists both."""
    import json

    from flows.analyze import analyze
    from weightsim import analysis

    store, uris = pipeline_store
    real, calls = analysis.analyze_arch, []

    def flaky(store_, dataset, sweep_, arch, *args, **kwargs):
        calls.append(arch)
        if arch == "gru" and calls.count("gru") == 1:
            raise StoreError("store went away (injected)")
        return real(store_, dataset, sweep_, arch, *args, **kwargs)

    monkeypatch.setattr(analysis, "analyze_arch", flaky)
    runs_by_arch = {a: [u for u in tables.list_runs(store) if f"/arch={a}/" in u] for a in ("mlp", "gru")}
    opts = Options(**{**TINY, "sweep": "again"}, store=store).to_dict()
    analyze(opts, runs_by_arch)
    assert sorted(calls) == ["gru", "gru", "mlp"]
    flow_run = _run(_flow_runs("analyze-digits-mlp+gru", store))[0]
    counts = {t.name: t.run_count for t in _run(_task_runs(flow_run.id)) if t.name.startswith("analyze-")}
    assert counts == {"analyze-gru": 2, "analyze-mlp": 1}

    analyze(Options(**{**TINY, "archs": "mlp", "sweep": "mlp-only"}, store=store).to_dict(),
            {"mlp": runs_by_arch["mlp"]})
    first = json.load(open(f"{store}/reports/digits/tiny/summary.json"))
    second = json.load(open(f"{store}/reports/digits/mlp-only/summary.json"))
    assert set(first["archs"]) == {"mlp", "gru"} and set(second["archs"]) == {"mlp"}
    assert os.path.exists(f"{store}/reports/digits/tiny/report.html")
    from flows.analyze import report

    report(Options(**{**TINY, "archs": "mlp", "sweep": "mlp-only"}, store=store).to_dict())
    index = json.load(open(f"{store}/reports/digits/index.json"))
    assert index["latest"] == "mlp-only" and {e["sweep"] for e in index["sweeps"]} == {"tiny", "again", "mlp-only"}
    assert "mlp-only (latest)" in open(f"{store}/reports/digits/index.md").read()
    assert _run(_artifacts("weightsim-report-digits-mlp-only")) and _run(_artifacts("weightsim-report-digits-tiny"))


def test_a_task_that_fails_once_is_retried(tmp_path, monkeypatch):
    real_write = sweep.write_many
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise StoreError("store went away (injected)")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(sweep, "write_many", flaky)
    opts = Options(archs="mlp", problems=1, seeds=2, epochs=1, store=str(tmp_path))
    result = train_sweep.with_options(task_runner=task_runner("local"))(opts.to_dict(), seed_chunk=2)
    assert result["trained"] == 2 and len(tables.list_runs(str(tmp_path))) == 2
    runs = _run(_flow_runs("train-digits-mlp", str(tmp_path)))
    task_runs = _run(_task_runs(runs[0].id))
    assert [t.run_count for t in task_runs] == [2]


@pytest.mark.slow
def test_dask_runner_with_a_local_two_worker_cluster(tmp_path):
    opts = Options(archs="mlp", problems=2, seeds=2, epochs=1, store=str(tmp_path))
    result = train_sweep.with_options(task_runner=task_runner("dask"))(opts.to_dict(), runner="dask", seed_chunk=1)
    assert result["trained"] == 4 and len(tables.list_runs(str(tmp_path))) == 4
    for uri in tables.list_runs(str(tmp_path)):
        tables.read_run(uri)


def test_importing_flows_installs_nothing_in_logging():
    """``import flows`` (and a flow module) changes no global logging state;
    ``flows.logs.one_line_errors`` installs the one-line factory, once."""
    import subprocess
    import sys

    code = ("import logging; f = logging.getLogRecordFactory(); import flows, flows.pipeline, flows.datasets, "
            "flows.fanout; assert logging.getLogRecordFactory() is f; from flows.logs import one_line_errors; "
            "one_line_errors(); g = logging.getLogRecordFactory(); one_line_errors(); "
            "assert g is not f and logging.getLogRecordFactory() is g; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]


def test_a_deployed_flow_logs_a_weightsim_error_in_one_line(tmp_path):
    """As a worker runs a deployment's flow: a fresh process imports the flow
    by its entrypoint and runs it (no CLI, nothing else of ours first); a
    WeightsimError it raises is logged by Prefect as one line, no traceback."""
    import subprocess
    import sys

    code = ("import importlib\nflow = getattr(importlib.import_module('flows.datasets'), 'watch_datasets')\n"
            f"try:\n    flow(store={str(tmp_path)!r}, overrides='not json')\n"
            "except Exception as exc:\n    print('raised', type(exc).__name__)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "raised WeightsimError" in p.stdout, out[-3000:]
    assert "is not a JSON object" in p.stderr + p.stdout.replace("raised WeightsimError", ""), out[-3000:]
    assert "Traceback" not in out, out[-3000:]
