"""Claims: one trainer per run, leases that expire, abandoned claims taken
over at once; fenced renewals and releases, one winner of a takeover, capped
leases, unknown pids; on a local folder and on S3 (moto server)."""
import json
import os
import subprocess
import sys
import threading
import time

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
    record = {"owner": "gone", **claims._machine(), "pid": dead, "started": "1", "renewed": time.time(), "lease": 60}
    store.put_bytes(claim_key(KEYS[0]), json.dumps(record).encode())
    store.put_bytes(claim_key(KEYS[1]), b"{not json")
    with Claims(store) as c:
        assert c.take(KEYS[:2]) == KEYS[:2]


def test_a_stalled_holder_neither_renews_nor_releases_its_successors_claim(store):
    stalled = Claims(store, ttl=0.3)  # never entered: it stalls, nobody renews its claims
    assert stalled.take(KEYS[:2]) == KEYS[:2]
    time.sleep(0.6)
    with Claims(store) as successor:
        assert successor.take(KEYS[:2]) == KEYS[:2]
        theirs = [store.get_bytes(claim_key(k)) for k in KEYS[:2]]
        stalled.release(KEYS[:1])  # wakes up and gives back a claim it no longer holds
        stalled.renew()  # and renews one it no longer holds
        assert [store.get_bytes(claim_key(k)) for k in KEYS[:2]] == theirs
        assert stalled.lost == {KEYS[1]} and not stalled.held
        with Claims(store) as third:
            assert third.take(KEYS[:2]) == []  # the successor still trains them


def test_of_three_takers_at_a_takeover_exactly_one_wins(store):
    keys = [f"weights/x/t{i}.parquet" for i in range(6)]
    lapsed = Claims(store, ttl=0.2)
    assert lapsed.take(keys) == keys
    time.sleep(0.4)
    takers = [Claims(store) for _ in range(3)]
    got: list[list[str]] = [[] for _ in takers]
    start = threading.Barrier(len(takers))

    def race(i: int) -> None:
        start.wait()
        for key in keys:
            got[i].extend(takers[i].take([key]))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(takers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(k for g in got for k in g) == sorted(keys)  # each lapsed claim taken over once


def test_a_far_future_lease_is_capped(store, monkeypatch):
    monkeypatch.setattr(claims, "MAX_LEASE", 0.5)
    far = {"owner": "x", "host": "another-host", "boot": "b", "pidns": "1", "pid": 1, "started": "1",
           "renewed": 1e12, "lease": 1e9}
    store.put_bytes(claim_key(KEYS[0]), json.dumps(far).encode())
    forged = {**far, **claims._machine(), "pid": os.getpid(), "started": claims._start_time(os.getpid())}
    store.put_bytes(claim_key(KEYS[1]), json.dumps(forged).encode())  # this host, renewed in the far future
    with Claims(store) as c:
        assert c.take(KEYS[:2]) == [KEYS[1]]  # another host: seen unchanged for the capped lease first
        time.sleep(0.7)
        assert c.take(KEYS[:1]) == [KEYS[0]]


def test_a_pid_that_cannot_be_inspected_or_lives_in_another_namespace_is_not_dead(store, monkeypatch):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(proc.stdout)
    here = {"owner": "x", **claims._machine(), "started": "1", "renewed": time.time(), "lease": 60}
    store.put_bytes(claim_key(KEYS[0]), json.dumps({**here, "pid": gone, "pidns": "another"}).encode())
    store.put_bytes(claim_key(KEYS[1]), json.dumps({**here, "pid": os.getpid()}).encode())
    monkeypatch.setattr(claims, "_start_time", lambda pid: None)  # hidden (hidepid, no /proc, macOS)
    with Claims(store) as c:
        assert c.take(KEYS[:2]) == []


@pytest.mark.parametrize("pid", [-1, 2 ** 40, True])
def test_a_claim_with_a_pid_that_names_no_process_is_not_taken_as_dead(store, pid):
    record = {"owner": "x", **claims._machine(), "pid": pid, "started": "1", "renewed": time.time(), "lease": 60}
    store.put_bytes(claim_key(KEYS[0]), json.dumps(record).encode())  # before: taken at once
    with Claims(store) as c:
        assert c.take(KEYS[:1]) == []
