"""Claims: a run is trained by one trainer at a time, even when several
sweeps (separate processes, machines or Prefect servers) share one store.

Before training a run, a trainer creates ``<table key>.claim`` beside the
weight table with an atomic create-if-absent (local: a hard link;
S3: a conditional PUT, ``If-None-Match: *``). Whoever creates it trains the
run and deletes the claim once the table is written; the others wait for the
table. A claim is a lease: its holder renews it every ``ttl / 3`` seconds,
and a claim that was not renewed for ``ttl`` seconds, or whose process is
known to be gone (same host, the pid no longer runs the process that made
it), is taken over. Two trainers taking over the same expired claim in the
same instant can both train that run; the table is still written whole
(atomic writes of identical, deterministic content), only the work doubles.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable

from .store import Store

SUFFIX = ".claim"
DEFAULT_TTL = 120.0


def claim_key(table_key: str) -> str:
    return table_key + SUFFIX


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


class Claims:
    """The claims one trainer holds on a store; a context manager whose exit
    releases every claim still held and stops the renewals."""

    def __init__(self, store: Store, ttl: float = DEFAULT_TTL) -> None:
        if not ttl > 0:
            raise ValueError("ttl must be > 0")
        self.store, self.ttl = store, ttl
        self.owner = uuid.uuid4().hex
        self.held: set[str] = set()
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
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": pid,
                           "started": _start_time(pid), "expires": time.time() + self.ttl}).encode()

    def take(self, table_keys: Iterable[str]) -> list[str]:
        """Claim what can be claimed of ``table_keys`` (free, expired or
        abandoned); the keys claimed now, in order."""
        got = []
        for key in table_keys:
            if self.store.create(claim_key(key), self._record()) or self._take_over(key):
                got.append(key)
        with self._lock:
            self.held.update(got)
        return got

    def _take_over(self, key: str) -> bool:
        try:
            claim = json.loads(self.store.get_bytes(claim_key(key)))
            stale = claim["expires"] < time.time() or self._abandoned(claim)
        except FileNotFoundError:  # released meanwhile: try once more
            return self.store.create(claim_key(key), self._record())
        except (ValueError, KeyError, TypeError):  # a damaged claim holds nothing
            stale = True
        if not stale:
            return False
        self.store.remove([claim_key(key)])
        return self.store.create(claim_key(key), self._record())

    @staticmethod
    def _abandoned(claim: dict) -> bool:
        """The claim was made on this host by a process that is gone."""
        if claim.get("host") != socket.gethostname() or not isinstance(claim.get("pid"), int):
            return False
        now = _start_time(claim["pid"])
        return now is None or now != claim.get("started")

    def release(self, table_keys: Iterable[str]) -> None:
        """Give claims back (after the tables are written, or on failure)."""
        keys = list(table_keys)
        with self._lock:  # never while a renewal rewrites one of them
            self.held.difference_update(keys)
            self.store.remove([claim_key(k) for k in keys])

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                for key in self.held:
                    try:
                        self.store.put_bytes(claim_key(key), self._record())
                    except Exception:  # noqa: BLE001 - a missed renewal only risks a takeover, never bad data
                        pass
