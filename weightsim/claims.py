"""Claims: a run is trained by one trainer at a time, even when several
sweeps (separate processes, machines or Prefect servers) share one store.

Before training a run, a trainer creates ``<table key>.claim`` beside the
weight table with an atomic create-if-absent (local: a hard link; S3: a
conditional PUT, ``If-None-Match: *``). Whoever creates it trains the run and
releases the claim once the table is written; the others wait for the table.

Claims are fenced: every change of an existing claim (renewal, release,
takeover) is a compare-and-swap against the exact record last read or
written (``Store.swap``: S3 ``If-Match`` on the ETag; locally under a
``flock`` of the folder). So a holder that stalled and lost its claim can
neither renew nor release its successor's claim (it learns it lost it:
``lost``), and of several trainers taking over one claim exactly one wins.

A claim is a lease: its holder renews it every ``ttl / 3`` seconds. A claim
is taken over when
- its process is known to be gone: same host, boot and pid namespace, and
  the pid no longer exists or runs another process (a pid that cannot be
  inspected is alive: unknown is not dead);
- or its lease lapsed: on the same host (one clock) when ``renewed + lease``
  has passed; from another host (clocks may differ) when this trainer has
  seen the same record unchanged for ``lease`` seconds of its own clock.
A lease is capped at ``MAX_LEASE``, so no record can block a run forever.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import socket
import threading
import time
import uuid
from collections.abc import Iterable

from .store import Store

SUFFIX = ".claim"
DEFAULT_TTL = 120.0
MAX_LEASE = 600.0  # seconds: the longest lease a claim record can ask for


def claim_key(table_key: str) -> str:
    return table_key + SUFFIX


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _exists(pid: int) -> bool | None:
    """Whether ``pid`` exists in this pid namespace (None: cannot tell)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OSError, OverflowError, ValueError):
        return None
    return True


def _machine() -> dict:
    """What makes pids comparable: host name, boot and pid namespace
    (None where this system does not tell)."""
    def read(path: str, how) -> str | None:
        try:
            return how(path)
        except OSError:
            return None

    return {"host": socket.gethostname(),
            "boot": read("/proc/sys/kernel/random/boot_id", lambda p: pathlib.Path(p).read_text().strip()),
            "pidns": read("/proc/self/ns/pid", lambda p: str(os.stat(p).st_ino))}


class Claims:
    """The claims one trainer holds on a store; a context manager whose exit
    releases every claim still held and stops the renewals. ``lost``: the
    claims this trainer held and another took over."""

    def __init__(self, store: Store, ttl: float = DEFAULT_TTL) -> None:
        if not ttl > 0:
            raise ValueError("ttl must be > 0")
        self.store, self.ttl = store, min(ttl, MAX_LEASE)
        self.owner = uuid.uuid4().hex
        self.machine = _machine()
        self.held: dict[str, bytes] = {}  # table key → the claim record as last written by us
        self.lost: set[str] = set()
        self._seen: dict[str, tuple[bytes, float]] = {}  # table key → (record, monotonic time first seen)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, daemon=True, name="weightsim-claims")

    def __enter__(self) -> "Claims":
        self._renewer.start()
        return self

    def __exit__(self, kind, *_) -> None:
        self._stop.set()
        self._renewer.join()
        try:
            self.release(list(self.held))
        except Exception:  # noqa: BLE001 - leaving on an error (e.g. the store went away): the claims expire
            if kind is None:
                raise

    def _record(self) -> bytes:
        pid = os.getpid()
        return json.dumps({"owner": self.owner, **self.machine, "pid": pid, "started": _start_time(pid),
                           "renewed": time.time(), "lease": self.ttl, "nonce": uuid.uuid4().hex}).encode()

    def take(self, table_keys: Iterable[str]) -> list[str]:
        """Claim what can be claimed of ``table_keys`` (free, lapsed or
        abandoned); the keys claimed now, in order."""
        got = []
        for key in table_keys:
            record = self._record()
            if self.store.create(claim_key(key), record) or self._take_over(key, record):
                got.append(key)
                with self._lock:
                    self.held[key] = record
                    self.lost.discard(key)
        return got

    def _take_over(self, key: str, record: bytes) -> bool:
        try:
            current = self.store.get_bytes(claim_key(key))
        except FileNotFoundError:  # released meanwhile: try once more
            return self.store.create(claim_key(key), record)
        if not self._stale(key, current):
            return False
        self._seen.pop(key, None)
        return self.store.swap(claim_key(key), current, record)  # fails if it changed since it was read

    def _stale(self, key: str, current: bytes) -> bool:
        """Whether the claim record ``current`` holds nothing any more."""
        now = time.monotonic()
        seen, since = self._seen.get(key, (None, now))
        self._seen[key] = (current, since if seen == current else now)
        try:
            claim = json.loads(current)
            if "lease" not in claim:  # written before leases were recorded: the default lease to "expires"
                claim = {**claim, "lease": DEFAULT_TTL, "renewed": float(claim["expires"]) - DEFAULT_TTL}
            lease = min(float(claim["lease"]), MAX_LEASE)
            renewed = float(claim["renewed"])
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # a damaged claim holds nothing
            return True
        if not (lease > 0 and math.isfinite(renewed)):
            return True
        if all(claim.get(k) == v for k, v in self.machine.items()):  # one clock, comparable pids
            wall = time.time()
            return self._gone(claim) or wall > renewed + lease or renewed > wall + lease
        return now - self._seen[key][1] > lease

    @staticmethod
    def _gone(claim: dict) -> bool:
        """The claim's process (on this host, boot and pid namespace) is
        known to be gone: its pid does not exist, or runs a process that
        started at another time. A pid that cannot be inspected is alive."""
        pid = claim.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return False
        exists = _exists(pid)
        if exists is not True:
            return exists is False
        now = _start_time(pid)
        return now is not None and claim.get("started") is not None and now != claim.get("started")

    def release(self, table_keys: Iterable[str]) -> None:
        """Give claims back (after the tables are written, or on failure);
        a claim another trainer took over is left to it."""
        keys = list(table_keys)
        with self._lock:  # never while a renewal rewrites one of them
            for key in keys:
                record = self.held.pop(key, None)
                if record is not None:
                    self.store.swap(claim_key(key), record, None)

    def renew(self) -> None:
        """Renew every claim held; one another trainer took over moves to
        ``lost``."""
        with self._lock:
            for key, record in list(self.held.items()):
                fresh = self._record()
                try:
                    if self.store.swap(claim_key(key), record, fresh):
                        self.held[key] = fresh
                    else:
                        del self.held[key]
                        self.lost.add(key)
                except Exception:  # noqa: BLE001 - a missed renewal only risks a takeover, never bad data
                    pass

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            self.renew()
