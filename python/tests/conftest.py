import json
import os
import subprocess
import sys

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


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    for k in ("TALLY_PATH", "TALLY_DB", "TALLY_DISABLE", "TALLY_PRICES", "TALLY_ENERGY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path
