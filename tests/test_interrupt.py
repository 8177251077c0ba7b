"""Ctrl-C from a real terminal: a pseudo-terminal whose line discipline sends
SIGINT to the whole foreground process group, as a user's terminal does."""
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

EXE = os.path.join(os.path.dirname(sys.executable), "weightsim")
ARGS = ["train", "--archs", "mlp", "--problems", "3", "--seeds", "4", "--epochs", "1000", "--seed-chunk", "2"]
RUNS = 3 * 4
BOUND = 30  # seconds from Ctrl-C to the process's exit: about 4 on a quiet machine, this on a loaded one


def _env(home):
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "WEIGHTSIM_STORE")}
    return {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            "PREFECT_LOGGING_COLORS": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}


def _processes_with(home) -> list[int]:
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
        assert _processes_with(home), "no embedded server was started"
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
    time.sleep(1)
    assert not _processes_with(home), "the embedded server outlived weightsim"
    done = len(list(store.rglob("*.parquet")))
    assert 0 < done < RUNS
    rerun = subprocess.run([EXE, *ARGS, "--store", str(store)], env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{RUNS - done} trained, {done} already there" in rerun.stdout


@pytest.mark.slow
def test_ctrl_c_mid_training_ends_the_process_not_only_the_flow(tmp_path):
    """The interrupted training tasks run on threads a KeyboardInterrupt does
    not reach: the process must still exit, not train on for minutes."""
    home = tmp_path / "prefect"
    args = [*ARGS[:-4], "--epochs", "100000", "--seed-chunk", "2", "--store", str(tmp_path / "store")]
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
    assert proc.wait(30) == 130 and elapsed < BOUND, elapsed
    deadline = time.time() + 15
    while _processes_with(home) and time.time() < deadline:
        time.sleep(0.2)
    assert not _processes_with(home), "the embedded server outlived weightsim"


@pytest.mark.slow
def test_kill_9_leaves_no_server_behind(tmp_path):
    home = tmp_path / "prefect"
    env = _env(home)
    proc = subprocess.Popen([EXE, *ARGS, "--store", str(tmp_path / "store")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    while len(_processes_with(home)) < 2 and time.time() < deadline:  # weightsim and its server
        time.sleep(0.5)
    assert len(_processes_with(home)) >= 2
    proc.kill()
    proc.wait(30)
    deadline = time.time() + 15
    while _processes_with(home) and time.time() < deadline:
        time.sleep(0.2)
    assert not _processes_with(home), "the embedded server outlived a killed weightsim"
