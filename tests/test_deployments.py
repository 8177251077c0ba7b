"""Integration: a real `prefect server start`, a process work pool and worker
(started from its own empty folder: it shares only the store and the server
with the deployer), `prefect deploy` from deployments/prefect.yaml, a
deployment run that completes, a dataset event that the trigger turns into a
flow run, and a dataset changed in place that the watch-datasets deployment
announces with overrides and that gets a sweep of its own."""
import asyncio
import json
import os
import re
import subprocess

import numpy as np
import pytest

from services import BIN, PrefectServer, wait_for as _wait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``prefect server start`` on SQLite; the server log must stay free of
    errors (its scheduler failed on SQLAlchemy 2.1, silently to users), but
    for SQLite's writer lock under load (see ``PrefectServer.errors``)."""
    home = tmp_path_factory.mktemp("prefect-home")
    server = PrefectServer(str(home)).start()
    yield server.env, server.url, home
    server.stop()
    errors = server.errors()
    assert not errors, "\n".join(errors)[-3000:]


def _cli(env, *args, timeout=300, **kw):
    p = subprocess.run([f"{BIN}/prefect", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, **kw)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


async def _flow_runs(url, deployment_name):
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async with PrefectClient(url) as client:
        return await client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=[deployment_name])))


@pytest.mark.timeout(1800)  # four sweeps through one worker, on a 2-core machine
def test_deploy_run_and_dataset_trigger(server, tmp_path):
    env, url, home = server
    store = tmp_path / "store"
    env = {**env, "WEIGHTSIM_STORE": str(store)}
    _cli(env, "work-pool", "create", "weightsim-cpu", "--type", "process")
    out = _cli(env, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
               "-n", "nightly", "-n", "on-new-dataset", "-n", "watch-datasets")
    assert "nightly" in out
    deployments = _cli(env, "deployment", "ls")
    for name in ("weightsim-pipeline/nightly", "on-new-dataset/on-new-dataset", "watch-datasets/watch-datasets"):
        assert name in deployments
    inspect = _cli(env, "deployment", "inspect", "weightsim-pipeline/nightly")
    assert "0 3 * * *" in inspect
    # the watcher's 5-minute schedule would race the announcements this test makes itself
    (schedule,) = re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", _cli(env, "deployment", "schedule", "ls",
                                                               "watch-datasets/watch-datasets"))
    _cli(env, "deployment", "schedule", "pause", "watch-datasets/watch-datasets", schedule)

    worker_log = open(tmp_path / "worker.log", "w")
    (tmp_path / "worker").mkdir()
    worker = subprocess.Popen([f"{BIN}/prefect", "worker", "start", "--pool", "weightsim-cpu"], env=env,
                              cwd=tmp_path / "worker", stdout=worker_log, stderr=subprocess.STDOUT)
    try:
        _cli(env, "deployment", "run", "weightsim-pipeline/nightly", "--param", "archs=mlp", "--param", "problems=4",
             "--param", "seeds=3", "--param", "epochs=2", "--param", "permutations=199", "--param", "sweep=nightly-test")

        def finished():
            runs = asyncio.run(_flow_runs(url, "nightly"))
            return runs and runs[0].state.is_final() and runs[0]

        run = _wait(finished, 420, "the deployment run")
        assert run.state.is_completed(), open(tmp_path / "worker.log").read()[-4000:]
        assert (store / "reports/digits/nightly-test/report.html").exists()
        assert {"dataset:digits", "sweep:nightly-test"} <= set(run.tags)

        # a new 3-class dataset, announced by the watcher, becomes a flow run of on-new-dataset that runs the
        # deployment's sweep template (10 problems) adapted to the 3 pair problems the dataset holds, to the end
        (store / "datasets").mkdir(parents=True)
        rng = np.random.default_rng(0)
        means = 3 * rng.standard_normal((3, 6))
        y, y_test = np.arange(60) % 3, np.arange(15) % 3
        np.savez(store / "datasets/mine.npz", x_train=means[y] + rng.standard_normal((60, 6)), y_train=y,
                 x_test=means[y_test] + rng.standard_normal((15, 6)), y_test=y_test)
        watch = subprocess.run([f"{BIN}/weightsim", "watch", "--store", str(store)], env=env, capture_output=True,
                               text=True, timeout=300)
        assert watch.returncode == 0 and "mine.npz" in watch.stdout, watch.stderr[-3000:]
        again = subprocess.run([f"{BIN}/weightsim", "watch", "--store", str(store)], env=env, capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0 and "announced" not in again.stdout  # each change is announced once

        def triggered():
            runs = asyncio.run(_flow_runs(url, "on-new-dataset"))
            return runs and runs[0].state.is_final() and runs[0]

        run = _wait(triggered, 600, "the triggered flow run to finish")
        assert run.state.is_completed(), open(tmp_path / "worker.log").read()[-4000:]
        assert run.parameters["dataset_uri"] == f"{store}/datasets/mine.npz" and run.name == "new-dataset-mine"
        (record,) = (store / "sweeps/mine").glob("*.json")
        sweep = json.loads(record.read_text())
        assert {"dataset:mine", f"sweep:{sweep['name']}", "weightsim"} <= set(run.tags)  # tagged like the CLI's
        assert sweep["problems"] == ["0v1", "0v2", "1v2"] or len(sweep["problems"]) == 3
        assert sweep["adaptations"] == ["problems 10 → 3: a 3-class dataset holds 3 problem(s) of 2 classes"]
        assert (store / f"reports/mine/{sweep['name']}/report.html").exists()
        worker_log = open(tmp_path / "worker.log").read()
        assert "adapted to mine: problems 10 → 3" in worker_log and "Traceback" not in worker_log
        first_report = (store / f"reports/mine/{sweep['name']}/report.html").read_bytes()

        # the same file changed in place, announced by the watch-datasets deployment (run by the worker) with
        # overrides over the template: the trigger runs a second sweep of its own, and the first one's report stays
        means = 3 * rng.standard_normal((3, 6))
        np.savez(store / "datasets/mine.npz", x_train=means[y] + rng.standard_normal((60, 6)), y_train=y,
                 x_test=means[y_test] + rng.standard_normal((15, 6)), y_test=y_test)
        _cli(env, "deployment", "run", "watch-datasets/watch-datasets", "--params",
             json.dumps({"overrides": {"archs": "mlp,gru", "epochs": 3}}))

        def changed():
            runs = [r for r in asyncio.run(_flow_runs(url, "on-new-dataset")) if r.name == "new-dataset-mine"]
            return len(runs) == 2 and all(r.state.is_final() for r in runs) and runs

        runs = _wait(changed, 600, "the flow run of the changed dataset to finish")
        assert all(r.state.is_completed() for r in runs), open(tmp_path / "worker.log").read()[-4000:]
        (watcher,) = [r for r in asyncio.run(_flow_runs(url, "watch-datasets")) if r.parameters.get("overrides")]
        assert watcher.state.is_completed() and watcher.parameters["overrides"] == {"archs": "mlp,gru", "epochs": 3}
        assert all(r.state.is_scheduled() for r in asyncio.run(_flow_runs(url, "watch-datasets")) if r != watcher)
        given = next(r for r in runs if r.parameters.get("overrides")).parameters["overrides"]
        assert (json.loads(given) if isinstance(given, str) else given) == {"archs": "mlp,gru", "epochs": 3}
        records = {json.loads(p.read_text())["name"]: json.loads(p.read_text())
                   for p in (store / "sweeps/mine").glob("*.json")}
        (second,) = set(records) - {sweep["name"]}
        assert records[second]["dataset"]["fingerprint"] != sweep["dataset"]["fingerprint"]
        assert records[second]["options"]["archs"] == ["mlp", "gru"] and records[second]["options"]["epochs"] == 3
        assert (store / f"reports/mine/{second}/report.html").exists()
        assert (store / f"reports/mine/{sweep['name']}/report.html").read_bytes() == first_report

        # a 2-class dataset holds one pair problem: nothing to test, so the triggered run fails at once, in one line
        np.savez(store / "datasets/pair.npz", x_train=rng.standard_normal((20, 6)), y_train=np.arange(20) % 2,
                 x_test=rng.standard_normal((6, 6)), y_test=np.arange(6) % 2)
        watch = subprocess.run([f"{BIN}/weightsim", "watch", "--store", str(store)], env=env, capture_output=True,
                               text=True, timeout=300)
        assert "pair.npz" in watch.stdout, watch.stderr[-3000:]

        def failed():
            runs = [r for r in asyncio.run(_flow_runs(url, "on-new-dataset")) if r.name == "new-dataset-pair"]
            return runs and runs[0].state.is_final() and runs[0]

        run = _wait(failed, 300, "the second triggered flow run to finish")
        assert run.state.is_failed() and "needs at least 2" in run.state.message

        # an event whose overrides are a JSON object (not its text) starts a run too
        _cli(env, "event", "emit", "weightsim.dataset.changed", "--resource-id", "weightsim.dataset.pair",
             "--payload", json.dumps({"uri": f"{store}/datasets/pair.npz", "overrides": {"seeds": 3}}))

        def with_object():
            runs = [r for r in asyncio.run(_flow_runs(url, "on-new-dataset")) if r.parameters.get("overrides")
                    == {"seeds": 3}]
            return runs and runs[0].state.is_final() and runs[0]

        run = _wait(with_object, 300, "the run of the event with an object of overrides to finish")
        assert run.state.is_failed() and "needs at least 2" in run.state.message  # it ran: the pair is the limit
        worker_log = open(tmp_path / "worker.log").read()
        assert "Traceback" not in worker_log and worker_log.count("needs at least 2") <= 6
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
