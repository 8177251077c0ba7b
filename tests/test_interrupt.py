"""Ctrl-C from a real terminal: a pseudo-terminal whose line discipline sends
SIGINT to the whole foreground process group, as a user's terminal does. The
command stops; the local Prefect server it started (in a session of its
own) keeps serving the next command."""
import fcntl
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time

import pytest

from services import processes_with, wait_for

EXE = os.path.join(os.path.dirname(sys.executable), "weightsim")
ARGS = ["train", "--archs", "mlp", "--problems", "3", "--seeds", "4", "--epochs", "300", "--seed-chunk", "2",
        "--verbose", "--partial"]  # the log lines in the terminal too; a design too small to analyze
RUNS = 3 * 4
BOUND = 30  # seconds from Ctrl-C to the process's exit: about 4 on a quiet machine, this on a loaded one


def _env(home):
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "WEIGHTSIM_STORE",
                                                            "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")}
    return {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            "PREFECT_LOGGING_COLORS": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}


def _in_terminal(args, env):
    """Start ``args`` as the foreground process group of a new pseudo-terminal."""
    master, slave = pty.openpty()

    def controlling_terminal():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                            preexec_fn=controlling_terminal, close_fds=True)
    os.close(slave)
    return proc, master


def _read_until(master, pattern, timeout):
    out, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            out += chunk
            if re.search(pattern, out):
                return out
    raise AssertionError(f"{pattern!r} not seen in {timeout} s: {out.decode(errors='replace')[-3000:]}")


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_cleanly_and_a_rerun_resumes(tmp_path):
    home, store = tmp_path / "prefect", tmp_path / "store"
    env = _env(home)
    proc, master = _in_terminal([EXE, *ARGS, "--store", str(store)], env)
    try:
        _read_until(master, rb"Task run 'train-mlp-[^']*' - Finished in state Completed", 600)
        server = recorded_in(home)
        assert server is not None and server.healthy(), "no local server was started"
        os.write(master, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the foreground process group
        t0 = time.time()
        after = b""
        while proc.poll() is None and time.time() - t0 < 30:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    after += os.read(master, 65536)
                except OSError:
                    break
        elapsed = time.time() - t0
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = after.decode(errors="replace")
    print(f"\nCtrl-C to process exit: {elapsed:.1f} s")
    assert rc == 130 and elapsed < BOUND, (rc, elapsed, text[-3000:])
    assert "Traceback" not in text and text.count("weightsim: interrupted") == 1, text[-3000:]
    try:
        assert server.healthy(), "the Ctrl-C took the local server down"
        assert processes_with(home) == [server.pid]
        done = len(list(store.rglob("*.parquet")))
        assert 0 < done < RUNS
        rerun = subprocess.run([EXE, *ARGS, "--store", str(store)], env=env, capture_output=True, text=True,
                               timeout=900)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "starting the local Prefect server" not in rerun.stderr  # the rerun used the same server
        assert f"{RUNS - done} trained, {done} already there" in rerun.stdout
    finally:
        _stop(home)
    assert not processes_with(home)


@pytest.mark.slow
def test_ctrl_c_mid_training_ends_the_process_not_only_the_flow(tmp_path):
    """The interrupted training tasks run on threads a KeyboardInterrupt does
    not reach: the process must still exit, not train on for minutes."""
    home = tmp_path / "prefect"
    args = [*ARGS[:7], "--epochs", "100000", "--seed-chunk", "2", "--verbose", "--partial", "--store",
            str(tmp_path / "store")]
    proc, master = _in_terminal([EXE, *args], _env(home))
    try:
        _read_until(master, rb"sweep \S+ recorded at", 600)
        time.sleep(5)  # the training tasks are well under way
        os.write(master, b"\x03")
        t0 = time.time()
        while proc.poll() is None and time.time() - t0 < 120:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    os.read(master, 65536)  # keep the terminal drained
                except OSError:
                    time.sleep(0.2)
        elapsed = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    print(f"\nCtrl-C mid-training to process exit: {elapsed:.1f} s")
    try:
        assert proc.wait(30) == 130 and elapsed < BOUND, elapsed
        server = recorded_in(home)
        assert server is not None and server.healthy(), "the Ctrl-C took the local server down"
        assert processes_with(home) == [server.pid]  # the training process itself is gone
    finally:
        _stop(home)
    assert not processes_with(home)


@pytest.mark.slow
def test_kill_9_of_a_command_leaves_the_server_serving_until_stopped(tmp_path):
    home = tmp_path / "prefect"
    env = _env(home)
    proc = subprocess.Popen([EXE, *ARGS, "--store", str(tmp_path / "store")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        server = wait_for(lambda: recorded_in(home), 600, "the command to start a local server", every=0.2)
        proc.kill()
        proc.wait(30)
        assert wait_for(server.healthy, 600, "the local server to answer")
        assert processes_with(home) == [server.pid]
    finally:
        if proc.poll() is None:
            proc.kill()
        stop = subprocess.run([EXE, "server", "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert stop.stdout.startswith("stopped the local Prefect server")
    assert not processes_with(home)


def recorded_in(home):
    """The local server recorded under PREFECT_HOME ``home``."""
    from flows import server

    old = os.environ["PREFECT_HOME"]
    os.environ["PREFECT_HOME"] = str(home)
    try:
        return server.recorded()
    finally:
        os.environ["PREFECT_HOME"] = old


def _stop(home):
    subprocess.run([EXE, "server", "stop"], env=_env(home), capture_output=True, timeout=120)
