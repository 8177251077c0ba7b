"""GPU slots the Prefect way: every training batch holds a slot of a global
concurrency limit. Two sweeps train at once in two processes, on the CPU
(``--slot-limit`` names the limit explicitly). The test holds every slot
until both are waiting for one, so they start together: with one slot their
training never overlaps in time; with two slots it does (so the measurement
can see an overlap)."""
import asyncio
import datetime
import os
import subprocess
import sys

import pytest

EXE = os.path.join(os.path.dirname(sys.executable), "weightsim")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


async def _create_limit(name, slots):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await client.upsert_global_concurrency_limit_by_name(name, slots)


async def _slot_logs(name, since):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp

    async with get_client() as client:
        logs, flt = [], LogFilter(timestamp=LogFilterTimestamp(after_=since))
        while page := await client.read_logs(log_filter=flt, limit=200, offset=len(logs)):
            logs += page
        return [log for log in logs if f"slot of {name} " in log.message]


async def _waiting(sweeps):
    """Whether every sweep has a training task running (waiting for a slot)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (TaskRunFilter, TaskRunFilterState, TaskRunFilterStateType,
                                                TaskRunFilterTags)
    from prefect.client.schemas.objects import StateType

    async with get_client() as client:
        for sweep in sweeps:
            running = await client.read_task_runs(task_run_filter=TaskRunFilter(
                tags=TaskRunFilterTags(all_=[f"sweep:{sweep}"]),
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))))
            if not running:
                return False
    return True


def _intervals(name, tmp_path, slots):
    """Train two sweeps at once under the limit ``name`` of ``slots`` slots,
    released together once both wait; the (taken, released) times of every
    slot, per task run."""
    from prefect.concurrency.sync import concurrency

    from services import wait_for

    since = datetime.datetime.now(datetime.timezone.utc)
    asyncio.run(_create_limit(name, slots))
    sweeps = [f"{name}-{i}" for i in range(2)]
    with concurrency(name, occupy=slots):
        procs = [subprocess.Popen([EXE, "train", "--partial", "--archs", "cnn", "--problems", "2", "--seeds", "4",
                                   "--epochs", "30", "--slot-limit", name, "--sweep", sweep, "--store", str(tmp_path / sweep)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for sweep in sweeps]
        wait_for(lambda: asyncio.run(_waiting(sweeps)), 300, "both sweeps to wait for a slot")
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and "8 trained" in out, err[-2000:]
    spans: dict = {}
    for log in asyncio.run(_slot_logs(name, since)):
        spans.setdefault(log.task_run_id, {})["taken" if " taken " in log.message else "released"] = log.timestamp
    assert len(spans) == 4 and all(len(s) == 2 for s in spans.values()), spans  # 2 sweeps × 2 training tasks
    return sorted((s["taken"], s["released"]) for s in spans.values())


def _overlaps(intervals) -> int:
    return sum(later[0] < earlier[1] for earlier, later in zip(intervals, intervals[1:]))


def test_one_slot_never_lets_two_trainings_overlap(tmp_path):
    assert _overlaps(_intervals("test-one-slot", tmp_path, 1)) == 0
    assert _overlaps(_intervals("test-two-slots", tmp_path, 2)) > 0


def test_a_bad_slot_limit_name_is_refused_in_one_line(tmp_path):
    p = subprocess.run([EXE, "train", "--slot-limit", "gpu slots/1", "--store", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--slot-limit 'gpu slots/1'" in p.stderr


@pytest.mark.parametrize("args, env, message", [
    ([], {"PREFECT_API_URL": ""}, "set PREFECT_API_URL"),
    (["--gpu-slots", "0"], {}, "--gpu-slots must be between 1"),
    (["--gpu-limit", "none"], {}, "--gpu-limit 'none'"),
    (["--unresponsive-after", "20"], {}, "--unresponsive-after must be between 60 s"),
    ([], {"PREFECT_API_URL": "http://127.0.0.1:9/api"}, "did not answer"),
])
def test_setup_refuses_bad_values_and_a_missing_server_in_one_line(args, env, message):
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", **env}
    p = subprocess.run([EXE, "setup", "--gpu-slots", "1", *args], capture_output=True, text=True, timeout=300,
                       env=env)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and message in p.stderr, p.stderr[-2000:]
