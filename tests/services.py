"""Real services for integration tests and benchmarks, started and stopped
here: a private PostgreSQL cluster and a ``prefect server start`` on SQLite
or on that cluster."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, every: float = 1.0):
    """Poll ``predicate`` until it returns something true; that value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def postgres_bin() -> str | None:
    """The folder of the newest installed PostgreSQL server binaries (Debian's
    layout, or ``initdb`` on the PATH), None where there are none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class PostgresCluster:
    """A throw-away PostgreSQL cluster in a temporary folder, on a free
    loopback port, with a password-protected role and database ``prefect``.
    PostgreSQL refuses to run as root, so as root it runs as the ``postgres``
    user. Server settings are PostgreSQL's defaults (fsync on)."""

    user, password, database = "prefect", "prefect-test-pw", "prefect"

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="weightsim-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.started = False

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Prefect takes as PREFECT_API_DATABASE_CONNECTION_URL."""
        return f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str) -> None:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        env = {**os.environ, "PGPASSWORD": self.password}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd="/")
        if p.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {p.stderr.strip()[-2000:]}")

    def start(self) -> "PostgresCluster":
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as f:
            f.write(self.password)
        if os.geteuid() == 0:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", self.data, "-U", self.user, "--pwfile", pwfile, "--auth", "scram-sha-256",
                  "--encoding", "UTF8", "--no-instructions")
        os.remove(pwfile)
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.root, "server.log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200",
                  "start")
        self.started = True
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database)
        return self

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


class PrefectServer:
    """``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME, on
    SQLite (``database_url`` None) or on the database at ``database_url``.
    ``env`` is what clients, workers and the CLI need to reach it."""

    def __init__(self, home: str, database_url: str | None = None, extra_env: dict | None = None):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=home, PREFECT_API_URL=self.url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   DO_NOT_TRACK="1", PREFECT_SERVER_LOGGING_LEVEL="WARNING", **(extra_env or {}))
        self.env = env
        self._server_env = dict(env)
        if database_url:
            self._server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
        self.log_path = os.path.join(home, "server.log")
        self.sqlite = not database_url
        self.proc = None

    def start(self, timeout: float = 300) -> "PrefectServer":
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen([f"{BIN}/prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                      str(self.port)], env=self._server_env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.home)

        def healthy():
            try:
                return urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"prefect server exited: {self.log()[-3000:]}") from None
                return False

        wait_for(healthy, timeout, "prefect server")
        return self

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def errors(self) -> list[str]:
        """The log's error records (a record is a timestamped line and what
        follows it, tracebacks included). On SQLite a write that waited out the
        busy timeout ("database is locked") is left out: that is SQLite's one
        writer at a time, which Prefect documents and production avoids with
        PostgreSQL (benchmarks/prefect_load.py measures it); the writer (a
        worker's heartbeat) retries on its next beat."""
        records = re.split(r"\n(?=\d\d:\d\d:\d\d\.\d+ \| )", self.log())
        errors = [r for r in records if "Traceback" in r or "| ERROR" in r]
        if self.sqlite:
            errors = [r for r in errors if "database is locked" not in r]
        return errors

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def processes_with(home) -> list[int]:
    """PIDs of processes whose environment holds PREFECT_HOME=home."""
    needle = f"PREFECT_HOME={home}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (read from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def thread_counts(setup: str, steps: list[str]) -> list[int]:
    """Threads of a fresh interpreter (from /proc) after the Python
    statement ``setup`` and after each of ``steps``; with OMP_NUM_THREADS=1,
    so that torch's own pool stays out of the count."""
    count = "len(__import__('os').listdir('/proc/self/task'))"
    script = "\n".join([setup, f"counts = [{count}]", *(f"{s}\ncounts.append({count})" for s in steps),
                        "print(*counts)"])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return [int(c) for c in out.stdout.split()]
