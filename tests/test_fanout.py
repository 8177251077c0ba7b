"""A sweep fanned out onto workers (``--runner pool:NAME``): `prefect server
start` on PostgreSQL, moto's S3 as the store, three ``weightsim worker``
processes, each started from an empty folder of its own with its own
PREFECT_HOME and worker name, and the sweep submitted by a fourth process
from a fourth folder (which deploys the chunks: deploy from one folder, run
in others). One worker is killed with SIGKILL in the middle of a chunk; the
chunk runs again elsewhere with no command from the test. The sweep reaches
the server through a proxy that fails its first ``POST /api/task_runs/``
with a 500: retried, not fatal."""
import asyncio
import os
import signal
import subprocess
import time

import pytest

from faults import FailOnce, TcpProxy
from services import BIN, free_port, process_tree, wait_for

pytestmark = pytest.mark.slow
POOL, SWEEP, PROBLEMS, SEEDS, CHUNK = "fan", "fan-out", 3, 8, 2  # 3 problems × 4 seed-chunks: 12 chunks
WORKERS = [f"w{i}-cpu0" for i in range(3)]


async def _chunk_runs(url):
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async with PrefectClient(url) as client:
        return await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["train-chunk"])))


def _worker(run) -> str | None:
    return next((t.removeprefix("worker:") for t in run.tags if t.startswith("worker:")), None)


def test_a_sweep_fans_out_over_three_workers_and_survives_a_killed_one(production, s3_bucket, tmp_path):
    import boto3

    from weightsim import tables

    bucket = s3_bucket.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store, url = f"{s3_bucket}/store", production.url
    env = {**production.env, "OMP_NUM_THREADS": "1"}
    proxy = TcpProxy(int(url.rsplit(":", 1)[1].split("/")[0]), free_port(), FailOnce(b"POST /api/task_runs/ "))
    proxy.start()

    procs, logs = [], []
    for i in range(3):
        (tmp_path / f"worker{i}").mkdir()
        logs.append(tmp_path / f"worker{i}.log")
        procs.append(subprocess.Popen(
            [f"{BIN}/weightsim", "worker", "--pool", POOL, "--cpus", "1", "--name", f"w{i}"],
            cwd=tmp_path / f"worker{i}", env={**env, "PREFECT_HOME": str(tmp_path / f"home{i}")},
            stdout=open(logs[i], "w"), stderr=subprocess.STDOUT))
    (tmp_path / "submit").mkdir()
    sweep = subprocess.Popen(
        [f"{BIN}/weightsim", "train", "--runner", f"pool:{POOL}", "--dataset", "digits", "--archs", "mlp",
         "--problems", str(PROBLEMS), "--seeds", str(SEEDS), "--seed-chunk", str(CHUNK), "--epochs", "8",
         "--store", store, "--sweep", SWEEP], cwd=tmp_path / "submit",
        env={**env, "PREFECT_HOME": str(tmp_path / "home-submit"), "PREFECT_API_URL": f"{proxy.endpoint}/api"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stopped = []
    try:
        def victim_mid_chunk():  # w0 has trained two chunks and runs a third
            mine = [r for r in asyncio.run(_chunk_runs(url)) if _worker(r) == WORKERS[0]]
            running = [r for r in mine if r.state.is_running()]
            return sum(r.state.is_completed() for r in mine) >= 2 and running and running[0]

        killed = wait_for(victim_mid_chunk, 420, "worker w0 in the middle of its third chunk", every=0.3)
        for pid in process_tree(procs[0].pid):
            os.kill(pid, signal.SIGKILL)
        out = sweep.communicate(timeout=600)[0]
        assert sweep.returncode == 0, out[-4000:]
        again = subprocess.run(sweep.args, cwd=tmp_path / "submit", env={**env, "PREFECT_HOME": str(
            tmp_path / "home-submit")}, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and "0 trained, 24 already there" in again.stdout, again.stdout[-3000:]
    finally:
        for p in [sweep, *procs]:
            if p.poll() is None:
                p.terminate()
        for p in procs[1:]:
            t = time.monotonic()
            p.wait(60)  # the workers stop within seconds of SIGTERM (here: on a busy 2-core machine)
            stopped.append(time.monotonic() - t)
        sweep.wait(30)
        proxy.stop()
    print(f"\nworkers stopped {', '.join(f'{s:.1f}' for s in stopped)} s after SIGTERM")
    assert proxy.intercept.hits == 1  # the sweep's one failed request was retried

    # every chunk is a run of its own, named after it, tagged with the sweep, listed with the worker that ran it
    runs = asyncio.run(_chunk_runs(url))
    names = {f"train-mlp-digits-{p}-seeds{s}-{s + CHUNK - 1}" for p in {r.parameters["problem"] for r in runs}
             for s in range(0, SEEDS, CHUNK)}
    assert len(runs) == len(names) == 12 and {r.name for r in runs} == names  # the rerun started no chunk
    assert all(r.state.is_completed() and {f"sweep:{SWEEP}", "dataset:digits"} <= set(r.tags) for r in runs)
    worker_of = {r.name: _worker(r) for r in runs}
    assert set(worker_of.values()) == set(WORKERS)
    assert all(list(worker_of.values()).count(w) >= 2 for w in WORKERS), worker_of
    rerun = next(r for r in runs if r.id == killed.id)  # placed again on another worker, by the sweep
    assert rerun.run_count >= 2 and worker_of[rerun.name] != WORKERS[0]

    # each run trained exactly once (one object version per table), by the worker of its chunk, which its
    # metrics name with the host and device
    versions = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="store/weights/"):
        versions += [v["Key"] for v in page.get("Versions", []) if v["Key"].endswith(".parquet")]
    assert len(versions) == len(set(versions)) == PROBLEMS * SEEDS
    for key in versions:
        meta = tables.read_run(f"s3://{bucket}/{key}").meta
        m = meta["metrics"]
        first = meta["seed"] // CHUNK * CHUNK
        chunk = f"train-mlp-digits-{meta['problem']}-seeds{first}-{first + CHUNK - 1}"
        assert m["device_index"] == "cpu" and m["host"] and m["worker"] in (
            {worker_of[chunk], WORKERS[0]} if chunk == rerun.name else {worker_of[chunk]}), (chunk, m)
    assert "Traceback" not in "".join(log.read_text() for log in logs[1:])
    errors = production.errors()
    assert not errors, "\n".join(errors)[-3000:]
