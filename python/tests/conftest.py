import json
import os
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.environ.get("TALLY_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ASAN = os.environ.get("TALLY_ASAN") == "1"


def read_events(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def requests_of(events):
    return [e for e in events if e.get("kind") == "eval" and e.get("name") == "request"]


def run_python(code, cwd, env=None, check=True):
    """Runs code in a fresh interpreter with the same tally package."""
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=e, capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def tally_cli(*args, cwd=None):
    """The tally command as the package gives it (python -m tally)."""
    r = subprocess.run([sys.executable, "-m", "tally", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    return r


def free_port():
    """A port nothing listens on (for a server the test starts, or a collector that is down)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(cond, timeout=20):
    """Polls cond until it is true or timeout seconds pass; returns its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def fork_children(t, n, work):
    """n forked children each run work(k) then close t (a child that ends
    with os._exit must); waits for them and checks each exited 0."""
    pids = []
    for k in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                work(k)
                t.close()
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    for k in ("TALLY_PATH", "TALLY_DB", "TALLY_DISABLE", "TALLY_PRICES", "TALLY_ENERGY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path
