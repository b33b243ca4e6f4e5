"""`tally exporter`: /metrics and OTLP from files written by programs that
do not link libtally (here: toy/v1 lines as a Ruby server writes them)."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import free_port
from otlp_receiver import Receiver
from test_metrics import parse, value


def cli():
    c = os.environ.get("TALLY_CLI")
    return [c] if c else [sys.executable, "-m", "tally"]


def toy_lines(start, n, model="llama"):
    """What Tep::Events#inference writes: no id, no ts, extra holds the fields."""
    out = []
    for i in range(start, start + n):
        out.append(json.dumps({"kind": "eval", "phase": "serve", "t": i // 100, "name": "request",
                               "extra": {"model": model, "prompt_tokens": 10 + i, "completion_tokens": 5,
                                         "latency_us": 1000 * (i % 50 + 1)}}, separators=(",", ":")))
    return "".join(l + "\n" for l in out)


def start_exporter(tmp, *args):
    port = free_port()
    p = subprocess.Popen(cli() + ["exporter", "--listen", f"127.0.0.1:{port}", *args], cwd=tmp,
                         stdout=subprocess.DEVNULL, stderr=open(tmp / "exporter.log", "a"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise AssertionError((tmp / "exporter.log").read_text())


def requests_seen(port, **labels):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return value(parse(text), "tally_requests_total", **labels)


def wait_value(port, want, timeout=15, **labels):
    end = time.monotonic() + timeout
    got = None
    while time.monotonic() < end:
        got = requests_seen(port, **labels)
        if got == want:
            return got
        time.sleep(0.1)
    return got


def stop(p):
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0


def test_follows_growth_rotation_truncation_and_restarts_without_double_counting(tmp):
    log = tmp / "server.jsonl"
    log.write_text(toy_lines(0, 100))
    runs = tmp / "runs" / "serve-1"
    runs.mkdir(parents=True)
    (runs / "events.jsonl").write_text(toy_lines(0, 20, model="qwen"))
    p, port = start_exporter(tmp, "server.jsonl", "runs")
    try:
        assert wait_value(port, 100, gen_ai_request_model="llama") == 100
        assert wait_value(port, 20, gen_ai_request_model="qwen") == 20
        with open(log, "a") as f:                        # growth, with a torn line completed later
            text = toy_lines(100, 50)
            f.write(text[:-30])
            f.flush()
            time.sleep(0.5)
            f.write(text[-30:])
        assert wait_value(port, 150, gen_ai_request_model="llama") == 150
        os.rename(log, tmp / "server.jsonl.1")           # rotation
        log.write_text(toy_lines(150, 10))
        assert wait_value(port, 160, gen_ai_request_model="llama") == 160
        log.write_text(toy_lines(160, 5))                # truncation (a shorter file, same inode)
        assert wait_value(port, 165, gen_ai_request_model="llama") == 165
        new_run = tmp / "runs" / "serve-2"               # a new run appears in the directory
        new_run.mkdir()
        (new_run / "events.jsonl").write_text(toy_lines(0, 7, model="mistral"))
        assert wait_value(port, 7, timeout=20, gen_ai_request_model="mistral") == 7
    finally:
        stop(p)
    # A restart rebuilds from what the files hold now: each line counted once.
    p, port = start_exporter(tmp, "server.jsonl", "runs")
    try:
        assert wait_value(port, 5, gen_ai_request_model="llama") == 5
        assert wait_value(port, 20, gen_ai_request_model="qwen") == 20
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        s = parse(text)
        assert value(s, "gen_ai_client_operation_duration_seconds_count", gen_ai_request_model="qwen") == 20
        assert value(s, "gen_ai_client_token_usage_sum", gen_ai_request_model="qwen", gen_ai_token_type="input") == \
            sum(10 + i for i in range(20))
    finally:
        stop(p)


def test_once_prints_what_stats_counts(tmp):
    (tmp / "a.jsonl").write_text(toy_lines(0, 40))
    r = subprocess.run(cli() + ["exporter", "--once", "a.jsonl"], cwd=tmp, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = parse(r.stdout)
    assert value(s, "tally_requests_total") == 40
    st = subprocess.run(cli() + ["stats", "--json", "a.jsonl"], cwd=tmp, capture_output=True, text=True)
    g = json.loads(st.stdout)["groups"][0]
    assert value(s, "gen_ai_client_operation_duration_seconds_sum") == pytest.approx(g["latency_total_s"])
    bad = subprocess.run(cli() + ["exporter", "--listen"], cwd=tmp, capture_output=True, text=True)
    assert bad.returncode == 2 and "--listen needs a value" in bad.stderr


def test_otlp_with_state_sends_each_event_once_across_restarts(tmp):
    rx = Receiver()
    try:
        (tmp / "a.jsonl").write_text(toy_lines(0, 30))
        args = ["a.jsonl", "--otlp", rx.url, "--state", "exp.state", "--spool", "spool"]
        p, port = start_exporter(tmp, *args)
        end = time.monotonic() + 15
        while len(rx.accepted_spans) < 30 and time.monotonic() < end:
            time.sleep(0.05)
        stop(p)
        assert len(rx.accepted_spans) == 30
        with open(tmp / "a.jsonl", "a") as f:
            f.write(toy_lines(30, 12))
        p, port = start_exporter(tmp, *args)
        end = time.monotonic() + 15
        while len(rx.accepted_spans) < 42 and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.5)
        stop(p)
        assert not rx.errors, rx.errors
        tokens = [int(s["_attrs"]["gen_ai.usage.input_tokens"]) for s in rx.accepted_spans]
        assert tokens == [10 + i for i in range(42)]          # each once, in order
        ids = [s["_attrs"]["tally.event.id"] for s in rx.accepted_spans]
        assert len(set(ids)) == 42
    finally:
        rx.stop()
