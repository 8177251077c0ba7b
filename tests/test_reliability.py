"""Reliability and security: crashes, storage faults, corrupted and hostile
data, concurrent sweeps, load. Every test fails when the behaviour breaks."""
from __future__ import annotations

import ast
import asyncio
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightsim import query, tables
from weightsim.archs import arch_spec, build
from weightsim.errors import TableError

from conftest import free_port
from faults import TcpProxy

pytestmark = pytest.mark.usefixtures("prefect_api")  # runs flows: the session's Prefect server

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXE = os.path.join(os.path.dirname(sys.executable), "weightsim")


def _train_cmd(store, seeds=8, archs="mlp,gru", problems=4, epochs=3, chunk=2):
    return [EXE, "train", "--archs", archs, "--problems", str(problems), "--seeds", str(seeds), "--epochs",
            str(epochs), "--seed-chunk", str(chunk), "--store", str(store)]


def _tables_on_disk(store) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in pathlib.Path(store).rglob("*.parquet")}


class VisibleTablesAreValid(threading.Thread):
    """Watches a local store and reads every table the moment it appears
    under its final name; any that does not verify is a failure."""

    def __init__(self, store):
        super().__init__(daemon=True)
        self.store, self.seen, self.bad, self.halt = pathlib.Path(store), set(), [], threading.Event()

    def run(self):
        while not self.halt.is_set():
            for p in self.store.rglob("*.parquet"):
                if p not in self.seen:
                    self.seen.add(p)
                    try:
                        tables.read_run(str(p))
                    except TableError as exc:
                        self.bad.append(str(exc))
            time.sleep(0.02)


@pytest.mark.slow
def test_kill_9_midway_then_resume(tmp_path):
    store = tmp_path / "store"
    watcher = VisibleTablesAreValid(store)
    watcher.start()
    proc = subprocess.Popen(_train_cmd(store), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list(store.rglob("*.parquet"))) < 12 and time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _tables_on_disk(store)
    assert 12 <= len(before) < 64
    done = subprocess.run(_train_cmd(store), capture_output=True, text=True, timeout=600)
    watcher.halt.set()
    watcher.join()
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{64 - len(before)} trained, {len(before)} already there" in done.stdout
    after = _tables_on_disk(store)
    assert len(after) == 64 and all(after[p] == b for p, b in before.items())  # earlier tables byte-identical
    assert not watcher.bad, watcher.bad  # no partial table was ever visible under a final name


def _s3_sweep(store, problems=2):
    from flows.train_sweep import train_sweep
    from weightsim.config import Options

    # chunks of 4 seeds: when the first table appears, every task still has runs to write
    return train_sweep(Options(archs="mlp", problems=problems, seeds=8, epochs=15, store=store).to_dict(),
                       seed_chunk=4)


def _sweep_behind_proxy(s3_server, monkeypatch, store, problems):
    """Start a sweep in a thread, with S3 reached through a proxy; return once
    the first table is written. Returns (proxy, thread, outcome)."""
    proxy = TcpProxy(s3_server.port, free_port())
    proxy.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    outcome = {}

    def run():
        try:
            outcome["result"] = _s3_sweep(store, problems)
        except Exception as exc:  # noqa: BLE001 - the failure is what some tests check
            outcome["error"] = exc

    sweep = threading.Thread(target=run, daemon=True)
    sweep.start()
    deadline = time.time() + 120
    while not tables.list_runs(store) and time.time() < deadline:
        time.sleep(0.05)
    return proxy, sweep, outcome


def _all_valid(store, n):
    uris = tables.list_runs(store)
    assert len(uris) == n
    for u in uris:
        tables.read_run(u)


@pytest.mark.slow
def test_s3_goes_away_and_comes_back(s3_server, s3_bucket, monkeypatch):
    store = f"{s3_bucket}/outage"
    proxy, sweep, outcome = _sweep_behind_proxy(s3_server, monkeypatch, store, problems=3)
    proxy.stop()  # the endpoint goes away mid-sweep ...
    time.sleep(4)
    proxy.start()  # ... and comes back: retries with backoff carry the sweep through
    sweep.join(300)
    assert "error" not in outcome and sum(map(len, outcome["result"]["runs"].values())) == 24
    _all_valid(store, 24)
    proxy.stop()


@pytest.mark.slow
def test_s3_stays_away_fails_naming_the_store_then_rerun_completes(s3_server, s3_bucket, monkeypatch):
    store = f"{s3_bucket}/down"
    proxy, sweep, outcome = _sweep_behind_proxy(s3_server, monkeypatch, store, problems=2)
    proxy.stop()
    sweep.join(300)
    assert store in str(outcome.get("error")), outcome
    proxy.start()
    assert len(tables.list_runs(store)) < 16  # the outage really cut the sweep short
    out = _s3_sweep(store)
    assert sum(map(len, out["runs"].values())) == 16
    _all_valid(store, 16)
    proxy.stop()


# --- corrupted and hostile tables ------------------------------------------------

@pytest.fixture(scope="module")
def valid_table():
    spec = arch_spec("cnn-bn", (8, 8), 2)
    torch.manual_seed(0)
    cps = {0: build(spec).state_dict(), 2: build(spec).state_dict()}
    meta = {"run_id": "r", "seed": 3, "arch": "cnn-bn", "spec": spec.to_dict(), "config": {"epochs": 2},
            "metrics": {"test_accuracy": 0.9}, "dataset": {"name": "d", "fingerprint": "f"},
            "problem": {"name": "0v1", "classes": [0, 1]}}
    data = tables.encode(cps, meta)
    return data, tables.read_bytes(data, "mem", [None, 0])


def _same(a, b):
    return all(x.meta == y.meta and all(torch.equal(x.state_dict[k], y.state_dict[k]) for k in x.state_dict)
               for x, y in zip(a, b))


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.data())
def test_fuzz_mutated_tables_raise_table_error_or_read_exactly(valid_table, data):
    raw, good = valid_table
    __tracebackhide__ = True
    buf = bytearray(raw)
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
    pos = data.draw(st.integers(0, len(buf) - 1))
    if kind == "flip":
        buf[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del buf[pos:]
    elif kind == "insert":
        buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        chunk = data.draw(st.binary(min_size=1, max_size=64))
        buf[pos:pos + len(chunk)] = chunk
    try:
        runs = tables.read_bytes(bytes(buf), "mem://fuzz", [None, 0])
    except TableError as exc:
        assert "mem://fuzz" in str(exc)
        return
    assert _same(runs, good)  # whatever still reads must be exactly the original


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(blob):
    with pytest.raises(TableError):
        tables.read_bytes(blob, "mem://random")


def test_wrong_schema_shapes_and_nan_tables_are_table_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = arch_spec("mlp", (8, 8), 2)
    torch.manual_seed(0)
    meta = {"run_id": "r", "seed": 0, "arch": "mlp", "spec": spec.to_dict(), "config": {"epochs": 1},
            "metrics": {"test_accuracy": 0.5}, "dataset": {"name": "d", "fingerprint": "f"},
            "problem": {"name": "0v1", "classes": [0, 1]}}
    sd = build(spec).state_dict()
    cases = {
        "nan": {0: sd, 1: {**sd, "out.bias": torch.tensor([float("nan"), 0.0])}},
        "shape": {0: sd, 1: {**sd, "out.weight": torch.zeros(3, 32)}},
        "missing": {0: sd, 1: {k: v for k, v in sd.items() if k != "out.bias"}},
    }
    for name, cps in cases.items():
        with pytest.raises(TableError, match=f"mem://{name}"):
            tables.read_bytes(tables.encode(cps, meta), f"mem://{name}")
    other = pa.table({"a": [1, 2]}).replace_schema_metadata({"weightsim": "{}"})
    sink = pa.BufferOutputStream()
    pq.write_table(other, sink)
    with pytest.raises(TableError, match="mem://schema"):
        tables.read_bytes(sink.getvalue().to_pybytes(), "mem://schema")


def test_no_pickle_or_torch_load_of_store_content():
    """Fails if code under weightsim/, tasks/ or flows/ calls pickle/torch loading,
    except the restricted CIFAR unpickler."""
    offenders = []
    for folder in ("weightsim", "tasks", "flows"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    base = node.func.value
                    owner = base.id if isinstance(base, ast.Name) else ""
                    if (owner, node.func.attr) in {("pickle", "load"), ("pickle", "loads"), ("torch", "load"),
                                                   ("dill", "load"), ("joblib", "load")}:
                        offenders.append(f"{path}:{node.lineno}")
                    if node.func.attr == "load" and any(isinstance(k, ast.keyword) and k.arg == "allow_pickle"
                                                        and getattr(k.value, "value", False) is True
                                                        for k in node.keywords):
                        offenders.append(f"{path}:{node.lineno} allow_pickle=True")
    assert not offenders, offenders
    # the only Unpickler subclass refuses everything but plain data
    from weightsim.datasets.unpickle import _PlainUnpickler

    assert len(_PlainUnpickler._ALLOWED) <= 5


@pytest.mark.slow
def test_s3_credentials_never_written_or_logged(s3_server, s3_bucket, capfd):
    import s3fs
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter

    from flows.pipeline import pipeline

    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    key_id = os.environ["AWS_ACCESS_KEY_ID"]
    store = f"{s3_bucket}/creds"
    pipeline(archs="mlp", problems=4, seeds=3, epochs=1, permutations=199, store=store)
    fs = s3fs.S3FileSystem(endpoint_url=s3_server.endpoint, skip_instance_cache=True)
    files = fs.find(s3_bucket.removeprefix("s3://"))
    assert any(f.endswith("report.html") for f in files) and any(f.endswith(".parquet") for f in files)
    for f in files:
        blob = fs.cat_file(f)
        assert secret.encode() not in blob and key_id.encode() not in blob, f

    async def everything():
        async with get_client() as client:
            arts = await client.read_artifacts()
            logs = await client.read_logs(log_filter=LogFilter())
            runs = await client.read_flow_runs()
        return [str(a.data) for a in arts] + [l.message for l in logs] + [str(r.parameters) for r in runs]

    texts = asyncio.run(everything())
    out, err = capfd.readouterr()
    for text in [*texts, out, err]:
        assert secret not in text and key_id not in text


@pytest.mark.slow
def test_concurrent_overlapping_sweeps(tmp_path):
    store = tmp_path / "store"
    a = subprocess.Popen(_train_cmd(store, seeds=6), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = subprocess.Popen(_train_cmd(store, seeds=8), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trained = 0
    for p in (a, b):
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        trained += int(re.search(r"(\d+) trained", out).group(1))
    files = list(store.rglob("*.parquet"))
    assert len(files) == 2 * 4 * 8 == len({f.name for f in files})  # every run exactly once
    assert trained == 2 * 4 * 8  # and trained once: the two sweeps claimed runs, not raced for them
    assert not list(store.rglob("*.claim"))
    assert not list(store.rglob("*.partial"))
    df = query.query(str(store))
    assert len(df) == 64 and df.run_id.is_unique
    for f in files:
        tables.read_run(str(f))


@pytest.mark.slow
def test_load_2000_tiny_runs_through_prefect(tmp_path, record_property):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    from flows.train_sweep import train_sweep
    from weightsim.config import Options

    opts = Options(dataset="synthetic:classes=2,shape=4,train=8,test=4", archs="mlp", problems=1, seeds=2000,
                   epochs=1, store=str(tmp_path))
    t0 = time.perf_counter()
    state = train_sweep(opts.to_dict(), seed_chunk=1, return_state=True)
    wall = time.perf_counter() - t0
    assert state.is_completed()
    result = state.result()
    assert result["trained"] == 2000 and len(tables.list_runs(str(tmp_path))) == 2000

    async def task_runs():
        flt = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        out = []
        async with get_client() as client:
            while page := await client.read_task_runs(task_run_filter=flt, limit=200, offset=len(out)):
                out += page
        return out

    # task-run states reach the API through Prefect's event stream: wait for the last ones to land
    deadline = time.time() + 120
    while not ((runs := asyncio.run(task_runs())) and len(runs) == 2000
               and all(r.state.is_completed() for r in runs)) and time.time() < deadline:
        time.sleep(2)
    assert len(runs) == 2000, len(runs)
    assert all(r.state.is_completed() for r in runs), {r.state.type for r in runs}
    record_property("wall_s", round(wall, 1))
    record_property("tasks_per_s", round(2000 / wall, 1))
    print(f"\n2000 tiny runs through Prefect: {wall:.1f} s, {2000 / wall:.1f} tasks/s")


@pytest.fixture
def auth_http_dataset(tmp_path):
    """A .npz served over HTTP behind Basic authentication; yields its URL
    with the credentials in it, and the password."""
    import base64
    import functools
    import http.server

    import numpy as np

    www = tmp_path / "www"
    www.mkdir()
    rng = np.random.default_rng(0)
    np.savez(www / "plain.npz", x_train=rng.standard_normal((60, 6)).astype(np.float32), y_train=np.arange(60) % 3,
             x_test=rng.standard_normal((15, 6)).astype(np.float32), y_test=np.arange(15) % 3)
    password = "hunter2-" + os.urandom(4).hex()
    token = "Basic " + base64.b64encode(f"user:{password}".encode()).decode()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def _allowed(self):
            if self.headers.get("Authorization") == token:
                return True
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False

        def do_GET(self):
            if self._allowed():
                super().do_GET()

        def do_HEAD(self):
            if self._allowed():
                super().do_HEAD()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://user:{password}@127.0.0.1:{server.server_address[1]}/plain.npz?X-Amz-Signature={password}", password
    server.shutdown()


def test_credentials_in_a_dataset_url_are_never_stored_or_logged(auth_http_dataset, tmp_path, capfd):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter

    from flows.cli import main
    from weightsim.datasets import load_dataset
    from weightsim.errors import DatasetError

    url, password = auth_http_dataset
    store = tmp_path / "store"
    assert main(["train", "--partial", "--dataset", url, "--archs", "mlp", "--problems", "2", "--seeds", "2",
                 "--epochs", "1", "--store", str(store)]) == 0
    runs = tables.list_runs(str(store))
    assert len(runs) == 4 and tables.read_meta(runs[0])["dataset"]["source"].startswith("http://127.0.0.1:")
    for f in store.rglob("*"):
        assert not f.is_file() or password.encode() not in f.read_bytes(), f

    async def everything():
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter())
            flow_runs = await client.read_flow_runs()
            task_runs = await client.read_task_runs()
        return ([l.message for l in logs] + [f"{r.name} {r.parameters}" for r in flow_runs]
                + [f"{r.name} {r.task_inputs}" for r in task_runs])

    out, err = capfd.readouterr()
    for text in [*asyncio.run(everything()), out, err]:
        assert password not in text
    wrong = url.replace(password, "wrong", 1).split("?")[0]
    with pytest.raises(DatasetError, match="not accessible") as info:
        load_dataset(wrong)
    assert "wrong" not in str(info.value)


def test_disk_full_is_not_retried_exits_2_and_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    import errno

    from flows.cli import main

    attempts, real = [], os.fsync

    def full(fd):  # the disk fills up once training writes its tables (the sweep record still fits)
        if "/weights/" not in os.readlink(f"/proc/self/fd/{fd}"):
            return real(fd)
        attempts.append(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code = main(["train", "--partial", "--archs", "mlp", "--problems", "2", "--seeds", "2", "--epochs", "1", "--store",
                 str(tmp_path), "--sweep", "disk-full"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("weightsim: error: store") and "No space left" in err
    assert attempts and "Retry" not in err

    async def failed_tasks():
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(
                all_=["sweep:disk-full"])))
        return [r for r in runs if r.state and r.state.is_failed()]

    from flows.server import drain

    drain()  # task runs reach the API as events, in batches
    deadline, failed = time.time() + 30, []
    while not failed and time.time() < deadline:
        failed = asyncio.run(failed_tasks())
        time.sleep(0.5)
    assert failed and all(r.run_count == 1 for r in failed)  # disk full: each task tried once, never retried
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and "weights" in p.parts]
