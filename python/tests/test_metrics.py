"""The Prometheus endpoint of libtally (driven through the Python package):
promtool's verdict, figures against `tally stats`, a real Prometheus
scraping it, prefork sums, the cardinality cap."""
import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import tally
from conftest import ASAN, fork_children, free_port, tally_cli, wait_for

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def parse(text):
    """[(name, {label: value}, float)] of every sample."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, line
        labels = dict(LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def value(samples, name, **want):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in want.items()))


def record_mix(t, n=600):
    models = ["llama-3.1-8b", "qwen2.5-7b", "mistral-7b"]
    for i in range(n):
        stream = i % 4 != 0
        t.request(model=models[i % 3], engine="vllm" if i % 2 else "sglang", provider="vllm",
                  prompt_tokens=50 + (i * 37) % 3000, completion_tokens=1 + (i * 13) % 700,
                  cached_tokens=(i % 5) * 10, reasoning_tokens=(i % 7),
                  latency_us=20_000 + (i * 7919) % 9_000_000, ttft_us=(5_000 + (i * 31) % 400_000) if stream else None,
                  cost_nusd=1000 * (i % 11), error="timeout" if i % 17 == 0 else None,
                  degraded="web_failed" if i % 23 == 0 else None)


def test_promtool_accepts_and_figures_equal_stats(tmp):
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is needed"
    with tally.Tally(path="e.jsonl", metrics_listen="127.0.0.1:0", phase="serve") as t:
        assert t.metrics_port > 0
        record_mix(t)
        with t.step(0) as s:
            s.loss, s.tokens = 2.5, 1000
        with t.step(1) as s:
            s.loss = float("nan")
        t.error("oom", "out of memory")
        t.flush()
        text = scrape(t.metrics_port)
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    s = parse(text)
    st = tally_cli("stats", "--json", "--by", "model", "e.jsonl")
    assert st.returncode == 0, st.stderr
    groups = json.loads(st.stdout)["groups"]
    for g in groups:
        if not g.get("requests"):
            continue
        m = g["model"]
        assert value(s, "gen_ai_client_operation_duration_seconds_count", gen_ai_request_model=m) == g["requests"]
        assert value(s, "gen_ai_client_operation_duration_seconds_sum", gen_ai_request_model=m) == \
            pytest.approx(g["latency_total_s"], rel=1e-9)
        assert value(s, "gen_ai_client_token_usage_sum", gen_ai_request_model=m, gen_ai_token_type="input") == \
            g["prompt_tokens"]
        assert value(s, "gen_ai_client_token_usage_sum", gen_ai_request_model=m, gen_ai_token_type="output") == \
            g["completion_tokens"]
        assert value(s, "tally_tokens_total", gen_ai_request_model=m, gen_ai_token_type="cached") == g["cached_tokens"]
        assert value(s, "tally_tokens_total", gen_ai_request_model=m, gen_ai_token_type="reasoning") == \
            g["reasoning_tokens"]
        assert value(s, "tally_cost_usd_total", gen_ai_request_model=m) == pytest.approx(g["cost_usd"], rel=1e-9)
        assert value(s, "tally_requests_total", gen_ai_request_model=m, outcome="error") == g["errors"]
        assert value(s, "tally_requests_degraded_total", gen_ai_request_model=m) == sum(g["degraded"].values())
        # TTFT: successful streaming requests
        ok_stream = value(s, "gen_ai_server_time_to_first_token_seconds_count", gen_ai_request_model=m)
        assert 0 < ok_stream <= g["ttft_requests"]
        # cumulative buckets end at the count
        inf = value(s, "gen_ai_client_operation_duration_seconds_bucket", gen_ai_request_model=m, le="+Inf")
        assert inf == g["requests"]
    assert value(s, "tally_train_steps_total") == 2 and value(s, "tally_train_nonfinite_losses_total") == 1
    assert value(s, "tally_train_loss") == 2.5 and value(s, "tally_train_tokens_total") == 1000
    assert value(s, "tally_errors_total", error_type="oom") == 1
    assert value(s, "tally_events_written_total") >= 600
    assert value(s, "tally_events_dropped_total") == 0


def test_real_prometheus_scrapes_it(tmp):
    prom = shutil.which("prometheus")
    assert prom, "prometheus (Debian's package) is needed"
    with tally.Tally(path="e.jsonl", metrics_listen="127.0.0.1:0") as t:
        record_mix(t, 900)
        t.flush()
        port = t.metrics_port
        web = free_port()
        (tmp / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n"
            f"scrape_configs:\n  - job_name: tally\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n")
        p = subprocess.Popen([prom, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                              f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL,
                             stderr=open(tmp / "prometheus.log", "w"))
        try:
            def query(q):
                url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": q})
                with urllib.request.urlopen(url, timeout=5) as r:
                    return json.load(r)["data"]["result"]
            deadline = time.monotonic() + 60
            res = []
            while time.monotonic() < deadline:
                try:
                    res = query("sum by (gen_ai_request_model) (tally_requests_total)")
                    if len(res) == 3:
                        break
                except (urllib.error.URLError, ConnectionError, KeyError):
                    pass
                time.sleep(0.5)
            assert len(res) == 3, (tmp / "prometheus.log").read_text()[-2000:]
            st = json.loads(tally_cli("stats", "--json", "--by", "model", "e.jsonl").stdout)["groups"]
            by_model = {g["model"]: g for g in st if g.get("requests")}
            for r in res:
                m = r["metric"]["gen_ai_request_model"]
                assert float(r["value"][1]) == by_model[m]["requests"]
                q = query("histogram_quantile(0.99, sum by (le) (gen_ai_client_operation_duration_seconds_bucket"
                          f'{{gen_ai_request_model="{m}"}}))')
                p99_prom = float(q[0]["value"][1])
                p99 = by_model[m]["latency_p99_ms"] / 1e3
                bounds = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
                hi = next(b for b in bounds if p99 <= b)
                lo = max([0.0] + [b for b in bounds if b < hi])
                assert lo <= p99_prom <= hi, (m, p99, p99_prom)
        finally:
            p.terminate()
            p.wait(timeout=30)


@pytest.mark.skipif(ASAN, reason="ASan's allocator is not fork-safe (as the C fork test)")
def test_prefork_workers_summed_at_one_endpoint(tmp):
    with tally.Tally(path="e.jsonl", metrics_listen="127.0.0.1:0") as t:
        def work(k):
            for i in range(250):
                t.request(model=f"m{k % 2}", prompt_tokens=10, completion_tokens=5, latency_us=1000 * (k + 1))
        fork_children(t, 4, work)
        s = parse(scrape(t.metrics_port))
        assert value(s, "tally_requests_total") == 1000
        assert value(s, "tally_requests_total", gen_ai_request_model="m0") == 500
        assert value(s, "gen_ai_client_operation_duration_seconds_sum") == pytest.approx(250 * (1 + 2 + 3 + 4) / 1000)
        assert value(s, "tally_events_written_total") == 1000
        assert value(s, "tally_events_offered_total") == 1000


def test_cardinality_cap(tmp):
    with tally.Tally(memory=True, metrics_listen="127.0.0.1:0", metrics_series_cap=10) as t:
        for i in range(200):
            t.request(model=f"req-{i}", prompt_tokens=1, completion_tokens=1, latency_us=10)
        t.flush()
        s = parse(scrape(t.metrics_port))
    series = [l for n, l, v in s if n == "tally_requests_total"]
    assert len(series) <= 11 and any(l["gen_ai_request_model"] == "_other" for l in series)
    assert value(s, "tally_requests_total") == 200                      # nothing lost, only merged
    assert value(s, "tally_metrics_series_overflow_total", family="tally_requests_total") >= 190
    durations = {l.get("gen_ai_request_model") for n, l, v in s if n == "gen_ai_client_operation_duration_seconds_count"}
    assert len(durations) <= 11


def test_listen_address_and_errors(tmp, monkeypatch):
    logs = []
    with tally.Tally(memory=True, metrics_listen="nonsense", log=lambda lv, m: logs.append(m)) as t:
        t.note("x")
        assert t.metrics_port == 0
    assert any("expected HOST:PORT" in m for m in logs)
    monkeypatch.setenv("TALLY_METRICS_LISTEN", ":0")                    # no host: 127.0.0.1, never all interfaces
    with tally.Tally(memory=True) as t:
        port = t.metrics_port
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
        assert e.value.code == 404
    monkeypatch.delenv("TALLY_METRICS_LISTEN")


def test_bucket_bounds_are_the_conventions():
    text_families = {
        "gen_ai_client_operation_duration_seconds": [0.01 * 2 ** i for i in range(14)],
        "gen_ai_client_token_usage": [4 ** i for i in range(14)],
    }
    with tally.Tally(memory=True, metrics_listen="127.0.0.1:0") as t:
        t.request(model="m", prompt_tokens=1, completion_tokens=1, latency_us=1)
        t.flush()
        s = parse(scrape(t.metrics_port))
    for fam, want in text_families.items():
        les = sorted({float(l["le"]) for n, l, v in s if n == fam + "_bucket" and l["le"] != "+Inf"})
        assert [pytest.approx(x) for x in want] == les
    assert not any(math.isnan(v) for n, l, v in s)


@pytest.mark.skipif(not os.environ.get("TALLY_FAKE_NVML"), reason="the test suite's fake NVML library is not built")
def test_device_energy_and_request_energy(tmp, monkeypatch):
    """A fake GPU drawing 250 W: the device's energy counter and the
    requests' energy histogram are served."""
    monkeypatch.setenv("TALLY_NVML_LIB", os.environ["TALLY_FAKE_NVML"])
    monkeypatch.setenv("TALLY_POWERCAP_ROOT", str(tmp / "no-powercap"))
    with tally.Tally(memory=True, metrics_listen="127.0.0.1:0", energy=True, energy_interval_ms=20) as t:
        for i in range(5):
            with t.timed_request(model="m", prompt_tokens=1, completion_tokens=1):
                time.sleep(0.1)
        t.flush()
        # a request's share is known once the sampler has read past its end
        wait_for(lambda: value(parse(scrape(t.metrics_port)), "tally_request_energy_joules_count") == 5, 10)
        s = parse(scrape(t.metrics_port))
    devices = [(l, v) for n, l, v in s if n == "tally_energy_joules_total"]
    assert len(devices) == 1 and devices[0][1] > 50                  # 250 W for well over 0.2 s
    assert value(s, "tally_request_energy_joules_count", gen_ai_request_model="m") == 5
    assert value(s, "tally_request_energy_joules_sum", gen_ai_request_model="m") > 0
