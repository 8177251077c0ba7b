"""Shared fixtures: an isolated Prefect home (the local server a command
starts there is stopped when the session ends), a real S3 endpoint (moto's
server on 127.0.0.1, started and stopped here), and small trained stores."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from services import PostgresCluster, PrefectServer, free_port, postgres_bin

# never the user's PREFECT_HOME (``make test`` exports the repository's): its local server is the user's
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="weightsim-prefect-")
os.environ["WEIGHTSIM_CACHE"] = tempfile.mkdtemp(prefix="weightsim-cache-")  # built-in datasets, never the user's
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "PREFECT_API_URL", "WEIGHTSIM_STORE"):
    os.environ.pop(var, None)

# Prefect binds its console log handler to sys.stderr when prefect.main is first imported (prefect itself
# imports lazily): first imported inside a test that captures output (capsys), the handler would keep that
# test's stream and print "Logging error" tracebacks into later tests once it is closed
import prefect.main  # noqa: E402,F401


class MotoServer:
    """``moto_server`` as a real process on 127.0.0.1; can be stopped and restarted
    on the same port (its buckets are lost on restart)."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 30):
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session", autouse=True)
def no_server_left():
    """Stops the local Prefect server that commands run without
    PREFECT_API_URL started under the session's PREFECT_HOME."""
    yield
    from flows.server import stop

    stop()


@pytest.fixture(scope="session")
def prefect_api():
    """One embedded Prefect server (real API, SQLite) for the whole session,
    started by the first test that asks for it (``usefixtures("prefect_api")``);
    subprocesses reach it through PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        yield url
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def s3_server():
    server = MotoServer()
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                          "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="weightsim-test-key", AWS_SECRET_ACCESS_KEY="weightsim-test-secret-XYZ",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=server.endpoint)
    server.start()
    yield server
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket; yields its s3:// URI."""
    import uuid

    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_server.endpoint, skip_instance_cache=True)
    fs.mkdir(name)
    yield f"s3://{name}"


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory, prefect_api):
    """A small trained digits store: 4 archs × 3 problems × 2 seeds, 5 epochs."""
    from flows.cli import main

    root = tmp_path_factory.mktemp("digits-store")
    assert main(["train", "--partial", "--dataset", "digits", "--archs", "mlp,cnn,rnn,gru", "--problems", "3",
                 "--seeds", "2", "--epochs", "5", "--store", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def production(tmp_path_factory, s3_server):
    """PostgreSQL, a Prefect server on it, and the env that reaches both."""
    bindir = postgres_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs the PostgreSQL server binaries (initdb, pg_ctl): install postgresql")
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    pg = PostgresCluster(bindir).start()
    home = str(tmp_path_factory.mktemp("prefect-pg-home"))
    server = PrefectServer(home, pg.url, {"PREFECT_WORKER_QUERY_SECONDS": "2"})
    try:
        server.start()
        yield server
    finally:
        server.stop()
        pg.stop()
