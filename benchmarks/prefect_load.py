"""Prefect under load, SQLite against PostgreSQL, side by side in one run.

Two real ``prefect server start`` processes run at once: one on SQLite (the
default), one on a private PostgreSQL cluster (tests/services.py). Each
round trains 2,000 tiny runs (one task each) through ``train_sweep`` in
``clients`` processes at once (1: one sweep; 3: three sweeps at once, as
several workers do) and is timed from the launch of the processes to the
moment the server holds all 2,000 task runs as Completed. Both backends do
the same rounds, the order alternating, ``--reps`` times. A round whose
sweeps fail (e.g. the server answers 503 when SQLite is locked) is reported
with the runs it completed, not left out.

    python -m benchmarks.prefect_load [--runs 2000] [--reps 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from services import PostgresCluster, PrefectServer, postgres_bin, wait_for  # noqa: E402

from benchmarks import emit  # noqa: E402

DATASET = "synthetic:classes=2,shape=4,train=8,test=4"


def client(store: str, seeds: int, tag: str) -> None:
    """One sweep of ``seeds`` tiny runs, one task each, tagged ``tag``."""
    from prefect import tags

    from flows.train_sweep import train_sweep
    from weightsim.config import Options

    opts = Options(dataset=DATASET, archs="mlp", problems=1, seeds=seeds, epochs=1, store=store)
    with tags(tag):
        state = train_sweep(opts.to_dict(), seed_chunk=1, return_state=True)
    if not state.is_completed():
        raise SystemExit(f"sweep failed: {state.message}")


def completed(url: str, tag: str) -> int:
    body = {"flow_runs": {"tags": {"all_": [tag]}}, "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    return httpx.post(f"{url}/task_runs/count", json=body, timeout=30).json()


def round_(server: PrefectServer, runs: int, clients: int, workdir: str) -> dict:
    tag = f"load-{uuid.uuid4().hex[:8]}"
    share = [runs // clients + (i < runs % clients) for i in range(clients)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.prefect_load", "--client", "--store",
                               os.path.join(workdir, f"{tag}-{i}"), "--seeds", str(n), "--tag", tag],
                              env={**server.env, "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i, n in enumerate(share)]
    errors = [p.communicate()[1] for p in procs]
    failed = [e.strip().splitlines()[-1][:300] for p, e in zip(procs, errors) if p.returncode]
    if not failed:
        wait_for(lambda: completed(server.url, tag) >= runs, 600, "every task run recorded", every=0.5)
    wall = time.perf_counter() - t0
    done = completed(server.url, tag)
    return {"clients": clients, "runs": runs, "completed": done, "wall_s": round(wall, 1),
            "tasks_per_s": round(done / wall, 1), "failed_clients": len(failed), "error": failed[0] if failed else "",
            "client_lock_errors": sum(e.count("database is locked") for e in errors),
            "client_503": sum(e.count("503 Service Unavailable") for e in errors)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--seeds", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tag", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        client(args.store, args.seeds, args.tag)
        return 0
    bindir = postgres_bin()
    if bindir is None:
        raise SystemExit("no PostgreSQL server binaries (initdb, pg_ctl) here")
    work = tempfile.mkdtemp(prefix="weightsim-load-")
    pg = PostgresCluster(bindir).start()
    servers = {"sqlite": PrefectServer(tempfile.mkdtemp(dir=work)),
               "postgresql": PrefectServer(tempfile.mkdtemp(dir=work), pg.url)}
    results = []
    try:
        for s in servers.values():
            s.start()
        for rep in range(args.reps):
            for i, clients in enumerate((1, 3)):
                order = list(servers) if (rep + i) % 2 == 0 else list(servers)[::-1]
                for backend in order:
                    r = {"backend": backend, "rep": rep, **round_(servers[backend], args.runs, clients, work)}
                    print(json.dumps(r), flush=True)
                    results.append(r)
        for backend, s in servers.items():
            log = s.log()
            print(json.dumps({"backend": backend, "server_errors": log.count("| ERROR"),
                              "server_lock_errors": log.count("database is locked")}), flush=True)
    finally:
        for s in servers.values():
            s.stop()
        pg.stop()
    for clients in (1, 3):
        line = []
        for b in servers:
            rs = [r for r in results if r["backend"] == b and r["clients"] == clients]
            ok = [r["tasks_per_s"] for r in rs if not r["failed_clients"]]
            line.append(f"{b} {sum(ok) / len(ok):.1f} tasks/s" if ok else f"{b} -")
            line.append(f"({len(rs) - len(ok)} of {len(rs)} rounds failed)" if len(ok) < len(rs) else "")
        print(f"{clients} client(s): {' '.join(x for x in line if x)}")
    emit(results, args.json, show=False)  # the lines above are the summary
    return 0


if __name__ == "__main__":
    sys.exit(main())
