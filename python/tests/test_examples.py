"""examples/python/train_torch.py: a real PyTorch loop recorded by tally."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ASAN, ROOT, read_events, tally_cli

torch = pytest.importorskip("torch")
# PyTorch's C++ exceptions do not survive ASan's runtime preloaded into an
# interpreter that was not built with it; the plain build runs this test.
pytestmark = pytest.mark.skipif(ASAN, reason="PyTorch under a preloaded ASan runtime")


def test_train_torch_example(tmp):
    script = os.path.join(ROOT, "examples", "python", "train_torch.py")
    r = subprocess.run([sys.executable, script, "--out", "runs", "--steps", "30", "--epochs", "2", "--bad-step", "7"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    runs = os.listdir("runs")
    assert len(runs) == 1 and runs[0].startswith("train-")
    ev = read_events(os.path.join("runs", runs[0], "events.jsonl"))
    steps = [e for e in ev if e["kind"] == "step"]
    assert len(steps) == 30 and steps[7].get("unfinished") is True
    good = [s for s in steps if not s.get("unfinished")]
    assert all(s["tokens"] == 64 * 8 and s["lr"] > 0 and s["grad_norm"] >= 0 for s in good)
    assert [e["name"] for e in ev if e["kind"] == "eval"] == ["val", "val"]
    assert [e["type"] for e in ev if e["kind"] == "error"] == ["IndexError"]
    st = tally_cli("stats", "--json", "runs")
    assert st.returncode == 0, st.stderr
    g = json.loads(st.stdout)["groups"][0]
    assert g["steps"] == 30 and g["epochs"] == 2 and g["error_events"] == 1
    assert g["loss_min"] < g["loss_first"]               # it learns
    rr = tally_cli("runs", "runs")
    assert rr.returncode == 0 and runs[0] in rr.stdout and "completed" in rr.stdout
