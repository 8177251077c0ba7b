"""The local Prefect server that weightsim commands share when
``PREFECT_API_URL`` is unset.

The first command that needs Prefect starts ``prefect server start`` (API and
dashboard) under ``PREFECT_HOME`` on a free loopback port, as a child in a
session of its own, and records its port and pid in
``PREFECT_HOME/weightsim-server.json``. The server outlives the command: later
commands reuse it after a health check, its dashboard keeps every run, and a
Ctrl-C in the terminal (SIGINT to the terminal's process group) reaches the
command only. ``weightsim server status|start|stop|logs`` manages it. Its own
output goes to ``PREFECT_HOME/weightsim-server.log``; usage telemetry is off.
Importing this module does not import Prefect.
"""
from __future__ import annotations

import contextlib
import fcntl
import inspect
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from weightsim.errors import WeightsimError

STATE_FILE, LOG_FILE, LOCK_FILE = "weightsim-server.json", "weightsim-server.log", "weightsim-server.lock"
TIMEOUT_VAR = "WEIGHTSIM_SERVER_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0  # a first start migrates the database: minutes on a loaded 2-core machine
REPORT_EVERY_S = 15.0


@dataclass(frozen=True)
class LocalServer:
    """A local server as recorded in its state file."""

    pid: int
    port: int

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.dashboard}/api"

    def healthy(self) -> bool:
        """Its API answers ``/health``."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False


def home() -> Path:
    """Prefect's home folder (``PREFECT_HOME``, Prefect's default ``~/.prefect``)."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser().absolute()


def log_path() -> Path:
    return home() / LOG_FILE


def recorded() -> LocalServer | None:
    """The server the state file names, if its process still lives (it may
    still be starting: see ``LocalServer.healthy``)."""
    try:
        state = json.loads((home() / STATE_FILE).read_text())
        server = LocalServer(int(state["pid"]), int(state["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return server if _alive(server.pid) else None


def _alive(pid: int) -> bool:
    """``pid`` is a running (not zombie) process; on Linux also one whose
    command line names prefect, so a recycled pid is not taken for it."""
    with contextlib.suppress(ChildProcessError):  # our own child that exited: reap it
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return not Path("/proc/self").exists()
    return stat.rpartition(")")[2].split()[0] != "Z" and (not cmdline or b"prefect" in cmdline)  # empty: exec-ing


def timeout_s() -> float:
    """How long a start may take (``WEIGHTSIM_SERVER_TIMEOUT`` seconds)."""
    raw = os.environ.get(TIMEOUT_VAR, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise WeightsimError(f"{TIMEOUT_VAR} must be a number of seconds > 0 (got {raw!r})")
    return value


def ensure(say=None) -> LocalServer:
    """The running local server, started first if there is none; waits for
    it to answer (up to ``timeout_s()``), reporting through ``say`` (one
    line per call) that it is waiting. A server that exits or never answers
    → WeightsimError naming the cause, its log and the setting."""
    say = say or (lambda line: print(f"weightsim: {line}", file=sys.stderr, flush=True))
    limit = timeout_s()
    folder = home()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a") as lock:  # two commands starting at once start one server
        fcntl.flock(lock, fcntl.LOCK_EX)
        server, proc = recorded(), None
        if server is not None and server.healthy():
            return server
        started = server is None
        if started:
            server, proc = _spawn(folder)
    say(f"{'starting' if started else 'waiting for'} the local Prefect server on port {server.port} "
        f"(log: {folder / LOG_FILE})")
    t0 = time.monotonic()
    next_report = t0 + REPORT_EVERY_S
    while not server.healthy():
        elapsed = time.monotonic() - t0
        if (proc.poll() is not None) if proc is not None else not _alive(server.pid):
            _forget(server)
            raise WeightsimError(f"the local Prefect server exited while starting: {_last_error()} "
                                 f"(log: {folder / LOG_FILE}; set PREFECT_API_URL to use another server)")
        if elapsed > limit:
            stop(server)
            raise WeightsimError(f"the local Prefect server did not answer within {limit:g} s (log: "
                                 f"{folder / LOG_FILE}); set {TIMEOUT_VAR} to wait longer, or PREFECT_API_URL "
                                 f"to use a running server")
        if time.monotonic() >= next_report:
            say(f"still waiting for the local Prefect server ({elapsed:.0f} s of at most {limit:g} s; "
                f"a loaded machine takes longer; {TIMEOUT_VAR} sets the limit)")
            next_report += REPORT_EVERY_S
        time.sleep(0.25)
    if started:
        say(f"local Prefect server started in {time.monotonic() - t0:.0f} s; it keeps running "
            f"(weightsim server stop)")
    return server


def _spawn(folder: Path) -> tuple[LocalServer, subprocess.Popen]:
    """Start ``prefect server start`` in a session of its own on a free port
    and record it (called under the lock)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(folder), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_LOGGING_COLORS="false")
    with open(folder / LOG_FILE, "wb") as log:  # the log of this server
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, cwd=folder, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = LocalServer(proc.pid, port)
    tmp = folder / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"pid": server.pid, "port": server.port}))
    tmp.replace(folder / STATE_FILE)
    return server, proc


def _last_error() -> str:
    """The cause of an exit: the log's last exception line (``…Error: …``),
    else its last line."""
    try:
        lines = [ln.strip() for ln in log_path().read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if re.match(r"[\w.]*(Error|Exception)\b.*:", ln)]
    return (errors or lines or ["empty log"])[-1][:300]


def _forget(server: LocalServer) -> None:
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((home() / STATE_FILE).read_text())
        if int(state.get("pid", -1)) == server.pid:
            (home() / STATE_FILE).unlink()


def stop(server: LocalServer | None = None, wait_s: float = 30) -> LocalServer | None:
    """Stop the local server (SIGTERM to its session, SIGKILL after
    ``wait_s``) and forget it; returns the one stopped, None if none ran."""
    server = server or recorded()
    if server is None:
        with contextlib.suppress(OSError):
            (home() / STATE_FILE).unlink()
        return None
    for sig, wait in ((signal.SIGTERM, wait_s), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, sig)
        deadline = time.monotonic() + wait
        while _alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(server.pid):
            break
    _forget(server)
    return server


@contextlib.contextmanager
def api_server() -> Iterator[str]:
    """The Prefect API for the block: ``PREFECT_API_URL`` when set, else the
    local server (started if needed; it keeps running after the block).
    Yields the API URL; the logs and events still queued are sent before
    the block ends."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    server = ensure()
    print(f"weightsim: dashboard {server.dashboard}", file=sys.stderr, flush=True)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = server.api_url  # subprocesses (Dask workers) use it too
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                drain()
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def drain() -> None:
    """Send the logs and events still queued before the command ends (as
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
