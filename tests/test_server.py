"""The local Prefect server that commands share without PREFECT_API_URL:
started once under PREFECT_HOME, reused, managed by ``weightsim server``,
and a start that fails exits 2 with one line that names the cause."""
import json
import os
import subprocess
import sys
import urllib.request

import pytest

from services import processes_with

EXE = os.path.join(os.path.dirname(sys.executable), "weightsim")


def _env(home, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "WEIGHTSIM_STORE")}
    return {**env, "PREFECT_HOME": str(home), **extra}


def _server(home, *args, **extra):
    return subprocess.run([EXE, "server", *args], env=_env(home, **extra), capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_started_once_reused_and_stopped(tmp_path):
    home = tmp_path / "prefect"
    assert "local Prefect server: not running" in _server(home, "status").stdout
    try:
        first = _server(home, "start")
        assert first.returncode == 0, first.stderr[-3000:]
        assert "starting the local Prefect server on port" in first.stderr
        state = json.loads((home / "weightsim-server.json").read_text())
        dashboard = f"http://127.0.0.1:{state['port']}"
        assert f"dashboard: {dashboard}\n" in first.stdout
        with urllib.request.urlopen(dashboard + "/", timeout=30) as page:  # the UI, not only the API
            assert b"<html" in page.read().lower()
        with urllib.request.urlopen(dashboard + "/ui-settings", timeout=30) as settings:
            assert json.load(settings)["api_url"] == f"{dashboard}/api"
        again = _server(home, "start")
        assert again.returncode == 0 and "starting" not in again.stderr
        assert json.loads((home / "weightsim-server.json").read_text()) == state
        status = _server(home, "status").stdout
        assert f"running, pid {state['pid']}" in status and f"api: {dashboard}/api" in status
        assert "Check out the dashboard" in _server(home, "logs", "--lines", "200").stdout
    finally:
        stopped = _server(home, "stop")
    assert stopped.stdout.startswith(f"stopped the local Prefect server (pid {state['pid']}")
    assert not (home / "weightsim-server.json").exists()
    assert not processes_with(home)
    assert "not running" in _server(home, "status").stdout


def test_a_start_that_takes_too_long_names_the_setting_and_leaves_nothing(tmp_path):
    home = tmp_path / "prefect"
    p = _server(home, "start", WEIGHTSIM_SERVER_TIMEOUT="0.5")
    assert p.returncode == 2
    assert p.stderr.splitlines()[-1] == (
        f"weightsim: error: the local Prefect server did not answer within 0.5 s (log: {home}/weightsim-server.log);"
        f" set WEIGHTSIM_SERVER_TIMEOUT to wait longer, or PREFECT_API_URL to use a running server")
    assert "Traceback" not in p.stderr
    assert not (home / "weightsim-server.json").exists() and not processes_with(home)


def test_a_bad_timeout_setting_is_refused(tmp_path):
    p = _server(tmp_path, "start", WEIGHTSIM_SERVER_TIMEOUT="soon")
    assert p.returncode == 2
    assert p.stderr == "weightsim: error: WEIGHTSIM_SERVER_TIMEOUT must be a number of seconds > 0 (got 'soon')\n"


@pytest.mark.slow
def test_a_server_that_exits_at_start_is_named_with_its_cause(tmp_path):
    home = tmp_path / "prefect"
    p = _server(home, "start", PREFECT_API_DATABASE_CONNECTION_URL="sqlite+aiosqlite:////nonexistent/dir/x.db")
    assert p.returncode == 2
    assert p.stderr.splitlines()[-1] == (
        "weightsim: error: the local Prefect server exited while starting: sqlalchemy.exc.OperationalError: "
        "(sqlite3.OperationalError) unable to open database file (log: "
        f"{home}/weightsim-server.log; set PREFECT_API_URL to use another server)")
    assert not (home / "weightsim-server.json").exists() and not processes_with(home)
