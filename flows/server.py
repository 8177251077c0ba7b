"""The embedded Prefect server of a command-line run, owned by it.

Without ``PREFECT_API_URL`` Prefect starts a temporary server as a child
process in the terminal's process group, so a Ctrl-C kills it together with
weightsim and the interrupted run then retries a dead API for minutes; and a
``kill -9`` of weightsim leaves it running. Here the server is started in a
session of its own (the terminal's SIGINT reaches weightsim only, which then
stops cleanly), is stopped when weightsim exits, and is sent SIGTERM by the
kernel if weightsim dies without stopping it (``PR_SET_PDEATHSIG``).
"""
from __future__ import annotations

import contextlib
import ctypes
import inspect
import os
import signal
import subprocess
from collections.abc import Iterator
from unittest import mock

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the server still stops with weightsim's atexit
        pass


@contextlib.contextmanager
def owned_server() -> Iterator[str | None]:
    """An embedded Prefect server for the duration of the block, unless
    ``PREFECT_API_URL`` names a server already (then nothing is started);
    yields the API URL in use."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        return real_popen(*args, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)

    # a private, short-lived server: no usage telemetry (offline machines; its writes also raced the
    # first runs' for SQLite's lock, printing "database is locked" tracebacks into the user's terminal)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = SubprocessASGIServer()
    try:
        with mock.patch.object(subprocess, "Popen", popen):
            server.start()
        os.environ["PREFECT_API_URL"] = server.api_url  # subprocesses (Dask workers) use it too
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                drain()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def drain() -> None:
    """Send the logs and events still queued before the server goes (as
    Prefect's own test harness does)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain_all() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain_all())
