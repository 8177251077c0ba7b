"""Production scale-out: `prefect server start` on a private PostgreSQL
cluster, an S3 store (moto's server), `weightsim setup`, deployments from
deployments/prefect.yaml and three process workers on one pool. Three sweeps
launched at once spread over the workers; one worker (with its flow run) is
killed with SIGKILL mid-sweep; the crash automation marks its run Crashed,
`prefect flow-run retry` reruns it, and the versioned bucket proves that
every weight table was written exactly once."""
import asyncio
import os
import signal
import subprocess
import time

import pytest

from services import BIN, process_tree, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow
SWEEPS = {"s-a": 6, "s-b": 8, "s-c": 10}  # sweep name: seeds; the runs of s-a lie in s-b, those of s-b in s-c
ARCHS, PROBLEMS = ["mlp", "cnn"], 3


def _run(env, *cmd, timeout=300):
    p = subprocess.run(list(cmd), env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


async def _read_runs(url, ids):
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(url) as client:
        return [await client.read_flow_run(i) for i in ids]


async def _scheduled(url):
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterName, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    async with PrefectClient(url) as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["nightly"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED]))))


async def _running(url):
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    async with PrefectClient(url) as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))))


async def _launch(url, sweeps):
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(url) as client:
        deployment = await client.read_deployment_by_name("weightsim-pipeline/nightly")
        return {name: (await client.create_flow_run_from_deployment(deployment.id, parameters=dict(
            archs=",".join(ARCHS), problems=PROBLEMS, seeds=seeds, epochs=4, seed_chunk=4, permutations=99,
            sweep=name))).id for name, seeds in sweeps.items()}


def test_three_workers_three_sweeps_on_postgres_and_a_killed_worker(production, s3_bucket, tmp_path):
    import boto3

    from weightsim import tables
    from weightsim.store import open_store

    bucket = s3_bucket.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store = f"{s3_bucket}/store"
    env = {**production.env, "WEIGHTSIM_STORE": store, "OMP_NUM_THREADS": "1"}
    url = production.url

    setup = _run(env, f"{BIN}/weightsim", "setup", "--gpu-slots", "2", "--unresponsive-after", "60")
    assert "work pool weightsim-cpu: created (process)" in setup and "weightsim-gpu: 2 slot(s)" in setup
    assert "work pool weightsim-cpu: exists" in _run(env, f"{BIN}/weightsim", "setup", "--gpu-slots", "2",
                                                     "--unresponsive-after", "60")  # idempotent
    _run(env, f"{BIN}/prefect", "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "-n", "nightly")

    logs, workers = [], []
    for i in range(3):
        logs.append(tmp_path / f"worker{i}.log")
        workers.append(subprocess.Popen([f"{BIN}/prefect", "worker", "start", "--pool", "weightsim-cpu", "--limit",
                                         "1", "--name", f"worker-{i}"], env=env, cwd=ROOT,
                                        stdout=open(logs[i], "w"), stderr=subprocess.STDOUT))
    try:
        ids = asyncio.run(_launch(url, SWEEPS))

        def owners():  # flow run → the worker running it (workers race for runs: not "submitting", but "View at")
            taken = {run_id: [i for i, log in enumerate(logs) if f"flow-run/{run_id}" in log.read_text()]
                     for run_id in ids.values()}
            return all(len(w) == 1 for w in taken.values()) and {r: w[0] for r, w in taken.items()}

        owner = wait_for(owners, 240, "the workers to take the three flow runs")
        assert sorted(owner.values()) == [0, 1, 2]  # every worker took one sweep

        # kill the worker of the biggest sweep, and its flow run, once tables are being written
        victim = ids["s-c"]
        fs = open_store(store)
        wait_for(lambda: len(fs.glob("weights/**/*.parquet")) >= 6, 300, "the first weight tables")
        assert asyncio.run(_read_runs(url, [victim]))[0].state.is_running()
        for pid in process_tree(workers[owner[victim]].pid):
            os.kill(pid, signal.SIGKILL)
        workers[owner[victim]].wait(10)
        killed = time.time()

        def final(run_ids):
            runs = asyncio.run(_read_runs(url, run_ids))
            return all(r.state.is_final() for r in runs) and runs

        others = [ids["s-a"], ids["s-b"]]
        for r in wait_for(lambda: final(others), 600, "the two other sweeps"):
            assert r.state.is_completed(), r.state.message
        (crashed,) = wait_for(lambda: final([victim]), 240, "the crash automation")
        assert crashed.state.is_crashed() and "no heartbeat" in crashed.state.message
        print(f"\nkilled worker's flow run marked Crashed after {time.time() - killed:.0f} s")

        _run(env, f"{BIN}/prefect", "flow-run", "retry", str(victim))
        (rerun,) = wait_for(lambda: final([victim]), 600, "the rerun of the crashed flow run")
        assert rerun.state.is_completed(), rerun.state.message
    finally:
        for w in workers:
            w.terminate()
        for w in workers:  # Prefect's own worker: its shutdown is not under test; a slow one is killed, not waited on
            try:
                w.wait(60)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(10)

    # every run of the three sweeps is in the store, written exactly once (one object version), and verifies
    expected = len(ARCHS) * PROBLEMS * max(SWEEPS.values())
    versions = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="store/weights/"):
        versions += [v["Key"] for v in page.get("Versions", []) if v["Key"].endswith(".parquet")]
    assert len(versions) == expected == len(set(versions)), (len(versions), len(set(versions)), expected)
    for key in set(versions):
        tables.read_run(f"s3://{bucket}/{key}")
    assert not fs.glob("weights/**/*.claim")
    for name in SWEEPS:
        assert fs.exists(f"reports/digits/{name}/report.html")
    for i, log in enumerate(logs):
        text = log.read_text()
        assert "database is locked" not in text and "OperationalError" not in text, text[-3000:]
        if i != owner[victim]:
            assert "Traceback" not in text, text[-3000:]
    # no flow run stays Running: the killed run's subflow was marked Crashed with it
    assert not asyncio.run(_running(url))
    # the server's scheduler created the nightly schedule's next runs (it could not with SQLAlchemy 2.1)
    scheduled = asyncio.run(_scheduled(url))
    assert scheduled and all(r.expected_start_time.strftime("%H:%M") == "03:00" for r in scheduled)
    errors = production.errors()
    assert not errors, "\n".join(errors)[-3000:]
