"""One sweep trained in-process and fanned out over 1, 2, 3 … workers
(``--runner pool:NAME``), side by side in one run, against one ``prefect
server start`` (on PostgreSQL where its binaries are installed, else SQLite).

Each round trains the same sweep into a fresh local store and is timed from
the launch of ``weightsim train`` to its exit. For the fan-out rounds,
Prefect's overhead per chunk is read from the chunk runs' states: *start-up*
is Pending → Running (the worker starts a process, which imports Prefect,
torch and weightsim and loads the flow), *queue* is Scheduled → Pending, and
*chunk* is Running → Completed (the training task, its store reads and
writes, the run's own API calls).

    python -m benchmarks.fanout [--workers 1,2,3] [--gpus] [--json out.json]

``--gpus``: one round in-process on CUDA and one with a worker per visible
GPU (``weightsim worker --gpus all``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from services import BIN, PostgresCluster, PrefectServer, postgres_bin, wait_for  # noqa: E402

from benchmarks import emit  # noqa: E402

SWEEP = ["--dataset", "digits", "--archs", "mlp", "--problems", "3", "--seeds", "8", "--seed-chunk", "2",
         "--epochs", "4"]  # 12 chunks of 2 seeds


async def _chunk_times(url: str, sweep: str) -> list[dict]:
    """Per chunk run of ``sweep``: seconds queued, starting up and running."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async with PrefectClient(url) as client:
        runs = [r for r in await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(
            any_=["train-chunk"]))) if f"sweep:{sweep}" in r.tags]
        out = []
        for run in runs:
            at = {}
            for s in sorted(await client.read_flow_run_states(run.id), key=lambda s: s.timestamp):
                at[s.type.value] = s.timestamp  # the last of each kind: a rescheduled chunk counts its last attempt
            out.append({"queue": (at["PENDING"] - at["SCHEDULED"]).total_seconds(),
                        "startup": (at["RUNNING"] - at["PENDING"]).total_seconds(),
                        "chunk": (at["COMPLETED"] - at["RUNNING"]).total_seconds()})
        return out


async def _online(url: str, pool: str) -> int:
    from prefect.client.orchestration import PrefectClient
    from prefect.exceptions import PrefectHTTPStatusError

    async with PrefectClient(url) as client:
        try:
            return len(await client.read_workers_for_work_pool(pool))
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 404:  # the workers have not created it yet
                return 0
            raise


def round_(env: dict, root: str, label: str, workers: list[str] | None, device: list[str]) -> dict:
    """One sweep (``device``: its --device argument, if any), in-process
    (``workers`` None) or on a pool served by ``weightsim worker`` with the
    device arguments ``workers``."""
    store, sweep, pool = os.path.join(root, f"store-{label}"), f"bench-{label}", f"bench-{label}"
    cmd = [f"{BIN}/weightsim", "train", *SWEEP, "--store", store, "--sweep", sweep,
           *(["--runner", f"pool:{pool}"] if workers else []), *device]
    proc = None
    if workers:
        proc = subprocess.Popen([f"{BIN}/weightsim", "worker", "--pool", pool, "--name", label, *workers],
                                env=env, cwd=tempfile.mkdtemp(dir=root), stdout=open(f"{store}.worker.log", "w"),
                                stderr=subprocess.STDOUT)
        n = int(workers[1]) if workers[0] == "--cpus" else None
        wait_for(lambda: asyncio.run(_online(env["PREFECT_API_URL"], pool)) >= (n or 1), 300, f"the workers of {pool}")
    try:
        t = time.perf_counter()
        p = subprocess.run(cmd, env=env, cwd=tempfile.mkdtemp(dir=root), capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - t
    finally:
        if proc:
            proc.terminate()
            proc.wait(60)
    if p.returncode:
        raise RuntimeError(f"{label}: {p.stdout[-2000:]}{p.stderr[-2000:]}")
    out = {"label": label, "wall_s": round(wall, 1)}
    if workers:
        chunks = asyncio.run(_chunk_times(env["PREFECT_API_URL"], sweep))
        out.update(chunks=len(chunks), **{f"{k}_s_mean": round(statistics.mean(c[k] for c in chunks), 2)
                                          for k in ("queue", "startup", "chunk")})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2,3", help="worker counts of the CPU fan-out rounds")
    ap.add_argument("--gpus", action="store_true", help="CUDA: in-process against one worker per visible GPU")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    root = tempfile.mkdtemp(prefix="weightsim-fanout-")
    bindir = postgres_bin()
    pg = PostgresCluster(bindir).start() if bindir else None
    server = PrefectServer(os.path.join(root, "home"), pg.url if pg else None, {"PREFECT_WORKER_QUERY_SECONDS": "2"})
    os.makedirs(server.home, exist_ok=True)
    rounds = []
    try:
        server.start()
        env = {**server.env, "PREFECT_WORKER_HEARTBEAT_SECONDS": "10"}
        if args.gpus:
            plan = [("in-process-cuda", None), ("all-gpus", ["--gpus", "all"])]
            device = ["--device", "cuda"]
        else:
            plan = [("in-process", None)] + [(f"{k}-workers", ["--cpus", k]) for k in args.workers.split(",")]
            device = []
        for label, workers in plan:
            r = round_(env, root, label, workers, device)
            rounds.append(r)
            print(json.dumps(r), flush=True)
    finally:
        server.stop()
        if pg:
            pg.stop()
    base = rounds[0]["wall_s"]
    for r in rounds:
        r["speedup_vs_in_process"] = round(base / r["wall_s"], 2)
    result = {"database": "postgresql" if pg else "sqlite", "sweep": " ".join(SWEEP), "cpus": os.cpu_count(),
              "rounds": rounds}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
