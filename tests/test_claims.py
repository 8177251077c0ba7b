"""Claims: one trainer per run, leases that expire, abandoned claims taken
over at once; on a local folder and on S3 (moto server)."""
import json
import os
import subprocess
import sys
import threading

import pytest

from weightsim import claims
from weightsim.claims import Claims, claim_key
from weightsim.store import open_store

KEYS = [f"weights/dataset=d/arch=mlp/problem=0v1/r{i}.parquet" for i in range(4)]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path))
    return open_store(request.getfixturevalue("s3_bucket") + "/claims")


def test_a_run_is_claimed_by_one_trainer_until_released(store):
    with Claims(store) as a, Claims(store) as b:
        assert a.take(KEYS[:3]) == KEYS[:3]
        assert b.take(KEYS) == [KEYS[3]]
        a.release([KEYS[0]])
        assert b.take(KEYS[:3]) == [KEYS[0]]
    assert not any(store.exists(claim_key(k)) for k in KEYS)  # leaving releases everything


def test_concurrent_takers_split_the_runs(store):
    many = [f"weights/x/r{i}.parquet" for i in range(24)]
    got: list[list[str]] = [[], [], []]
    holders = [Claims(store) for _ in got]
    threads = [threading.Thread(target=lambda i=i: got[i].extend(holders[i].take(many))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(k for g in got for k in g) == sorted(many)  # each exactly once


def test_an_expired_lease_is_taken_over_and_a_renewed_one_is_not(store, monkeypatch):
    import time

    lapsed = Claims(store, ttl=0.5)  # never entered: nobody renews it
    assert lapsed.take(KEYS[:1]) == KEYS[:1]
    with Claims(store, ttl=0.5) as renewed:
        assert renewed.take(KEYS[1:2]) == KEYS[1:2]
        monkeypatch.setattr(claims, "_start_time", lambda pid: "alive")  # neither process looks abandoned
        time.sleep(1.2)
        with Claims(store) as other:
            assert other.take(KEYS[:2]) == KEYS[:1]


def test_a_claim_of_a_dead_process_on_this_host_is_taken_at_once(store):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)
    record = {"owner": "gone", "host": os.uname().nodename, "pid": dead, "started": "1", "expires": 1e12}
    store.put_bytes(claim_key(KEYS[0]), json.dumps(record).encode())
    store.put_bytes(claim_key(KEYS[1]), b"{not json")
    with Claims(store) as c:
        assert c.take(KEYS[:2]) == KEYS[:2]
