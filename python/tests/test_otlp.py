"""The OTLP/HTTP exporter of libtally against a receiver that checks the
encoding and answers as a collector may."""
import json
import time

import tally
from conftest import free_port, read_events, requests_of, run_python, wait_for
from otlp_receiver import Receiver


def event_ids(spans):
    return [s["_attrs"]["tally.event.id"] for s in spans]


def test_spans_and_metrics_delivered(tmp, monkeypatch):
    rx = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret,x-team=ml")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "chat-api")
    logs = []
    try:
        with tally.Tally(path="e.jsonl", otlp_endpoint=rx.url, otlp_metrics_interval_ms=200,
                         log=lambda lv, m: logs.append(m)) as t:
            for i in range(1500):
                t.request(model="llama", engine="vllm", provider="vllm", prompt_tokens=100 + i, completion_tokens=10,
                          cached_tokens=5, reasoning_tokens=2, latency_us=250_000, ttft_us=20_000,
                          finish_reason="stop", cost_nusd=1200, stages={"queue": 7, "prefill": 30},
                          route="chat", degraded="slow" if i == 3 else None, error="timeout" if i == 4 else None)
            with t.step(1) as s:
                s.loss, s.lr, s.tokens = 1.25, 3e-4, 4096
            t.error("oom", "CUDA out of memory", step=1)
            t.note("not a span")
        assert not rx.errors, rx.errors
        ev = read_events("e.jsonl")
        want = [e["id"] for e in ev if e["kind"] in ("eval", "step", "error")]
        got = event_ids(rx.accepted_spans)
        assert sorted(got) == sorted(want) and len(got) == len(set(got))       # each once
        by_id = {s["_attrs"]["tally.event.id"]: s for s in rx.accepted_spans}
        r0 = requests_of(ev)[0]
        s0 = by_id[r0["id"]]
        a = s0["_attrs"]
        assert s0["name"] == "chat llama" and s0["kind"] == 3
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "vllm"
        assert a["gen_ai.request.model"] == "llama" and a["gen_ai.usage.input_tokens"] == "100"
        assert a["gen_ai.usage.output_tokens"] == "10" and a["gen_ai.usage.cache_read.input_tokens"] == "5"
        assert a["gen_ai.usage.reasoning.output_tokens"] == "2"
        assert a["gen_ai.response.finish_reasons"] == {"values": [{"stringValue": "stop"}]}
        assert a["tally.cost_usd"] == 1.2e-6 and a["tally.stage.queue_us"] == "7" and a["tally.route"] == "chat"
        assert int(s0["endTimeUnixNano"]) - int(s0["startTimeUnixNano"]) == 250_000_000
        assert s0["_resource"]["service.name"] == "chat-api"
        failed = by_id[requests_of(ev)[4]["id"]]
        assert failed["status"]["code"] == 2 and failed["_attrs"]["error.type"] == "timeout"
        assert by_id[requests_of(ev)[3]["id"]]["_attrs"]["tally.degraded"] == "slow"
        step = [s for s in rx.accepted_spans if s["name"] == "train step"][0]
        assert step["_attrs"]["tally.loss"] == 1.25 and step["_attrs"]["tally.lr"] == 3e-4
        err = [s for s in rx.accepted_spans if s["name"] == "error oom"][0]
        assert err["status"]["code"] == 2 and err["_attrs"]["tally.step"] == "1"
        post = rx.trace_posts()[0]
        headers = {k.lower(): v for k, v in post[3].items()}
        assert headers["authorization"] == "Bearer s3cret" and headers["x-team"] == "ml"
        assert headers.get("content-encoding") == "gzip"
        assert not any("s3cret" in m for m in logs)                               # credentials never logged
        # metrics: the last export has every request
        assert rx.metrics
        last = rx.metrics[-1]
        dur = last["gen_ai.client.operation.duration"]
        assert sum(int(p["count"]) for _, p in dur) == 1500
        assert sum(p["sum"] for _, p in dur) == 1500 * 0.25
    finally:
        rx.stop()


def test_refusals_are_not_retried_and_are_counted(tmp):
    answers = {0: (400, {}, b'{"message":"bad"}'), 1: (413, {}, b"{}"),
               2: (200, {}, b'{"partialSuccess":{"rejectedSpans":"3","errorMessage":"3 spans too old"}}')}
    rx = Receiver(script=lambda n, path: answers.get(n, (200, {}, b"{}")) if path == "/v1/traces"
                  else (200, {}, b"{}"))
    logs = []
    try:
        with tally.Tally(memory=True, otlp_endpoint=rx.url, otlp_backoff_ms=50,
                         log=lambda lv, m: logs.append(m)) as t:
            for batch in range(4):
                for i in range(10):
                    t.request(model=f"m{batch}", prompt_tokens=1, completion_tokens=1, latency_us=1)
                t.flush()
                assert wait_for(lambda: len(rx.trace_posts()) >= batch + 1)
            time.sleep(0.3)
            lost = t.counters()["sinks_lost"]["otlp"]
            posts = rx.trace_posts()
        assert [p[1] for p in posts] == [400, 413, 200, 200]     # each batch once: nothing retried
        assert lost == 10 + 10 + 3
        assert any("HTTP 400" in m and "bad" in m for m in logs) and any("3 spans too old" in m for m in logs)
        assert len(rx.accepted_spans) == 20                      # the receiver keeps whole batches it took
    finally:
        rx.stop()


def test_retry_after_is_honoured(tmp):
    answers = {0: (429, {"Retry-After": "1"}, b"{}"), 1: (503, {"Retry-After": "1"}, b"{}")}
    rx = Receiver(script=lambda n, path: answers.get(n, (200, {}, b"{}")) if path == "/v1/traces"
                  else (200, {}, b"{}"))
    try:
        with tally.Tally(path="e.jsonl", otlp_endpoint=rx.url, otlp_backoff_ms=50) as t:
            for i in range(25):
                t.request(model="m", prompt_tokens=1, completion_tokens=1, latency_us=1)
            t.flush()
            assert wait_for(lambda: any(p[1] == 200 for p in rx.trace_posts()), 15)
            posts = rx.trace_posts()
            lost = t.counters()["sinks_lost"]["otlp"]
        assert [p[1] for p in posts[:3]] == [429, 503, 200]
        assert posts[0][2] == posts[1][2] == posts[2][2]          # the same batch, again
        assert lost == 0 and len(rx.accepted_spans) == 25
    finally:
        rx.stop()


def test_collector_down_spool_replayed_in_order_by_the_next_process(tmp):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spool = tmp / "spool"
    first = f"""
import time, tally
t = tally.Tally(path="a.jsonl", otlp_endpoint="{url}", otlp_spool_dir="{spool}", otlp_backoff_ms=50)
start = time.perf_counter()
for b in range(3):
    for i in range(100):
        t.request(model="a", prompt_tokens=b * 100 + i, completion_tokens=1, latency_us=1)
    t.flush()
took = time.perf_counter() - start
c = t.counters()
t.close()
print(took, c["dropped"], c["sinks_lost"]["otlp"])
"""
    out = run_python(first, tmp).stdout.split()
    assert float(out[0]) < 5 and out[1] == "0" and out[2] == "0"   # the collector being away cost nothing
    files = sorted(p.name for p in spool.iterdir() if p.is_file())
    assert len(files) >= 3 and not any(".sending-" in f for f in files)
    rx = Receiver(port=port)
    try:
        second = f"""
import tally
t = tally.Tally(path="b.jsonl", otlp_endpoint="{url}", otlp_spool_dir="{spool}", otlp_backoff_ms=50)
for i in range(50):
    t.request(model="b", prompt_tokens=i, completion_tokens=1, latency_us=1)
t.close()
"""
        run_python(second, tmp)
        assert wait_for(lambda: len(rx.accepted_spans) >= 350, 20)
        assert not rx.errors, rx.errors
        spans = rx.accepted_spans
        models = [s["_attrs"]["gen_ai.request.model"] for s in spans]
        assert models == ["a"] * 300 + ["b"] * 50                  # the spool first, in order
        a_tokens = [int(s["_attrs"]["gen_ai.usage.input_tokens"]) for s in spans[:300]]
        assert a_tokens == list(range(300))
        ids = event_ids(spans)
        assert len(set(ids)) == 350
        assert [e["id"] for e in requests_of(read_events(tmp / "a.jsonl"))] == ids[:300]
        assert not [p for p in spool.iterdir() if p.is_file()]     # replayed and removed
    finally:
        rx.stop()


def test_metrics_body_checked(tmp):
    rx = Receiver()
    try:
        with tally.Tally(memory=True, otlp_endpoint=rx.url, otlp_metrics_interval_ms=100) as t:
            for i in range(10):
                t.request(model="m", prompt_tokens=10, completion_tokens=2, latency_us=1000 * i, ttft_us=500,
                          cost_nusd=100)
            with t.step(0) as s:
                s.loss = 2.0
            t.flush()
            assert wait_for(lambda: rx.metrics and "gen_ai.client.token.usage" in rx.metrics[-1], 10)
        assert not rx.errors, rx.errors
        m = rx.metrics[-1]
        usage = {a["gen_ai.token.type"]: p for a, p in m["gen_ai.client.token.usage"]}
        assert usage["input"]["sum"] == 100 and usage["output"]["sum"] == 20
        assert m["tally.train.loss"][0][1]["asDouble"] == 2.0
        assert json.dumps(m["tally.cost"][0][1]["asDouble"]) == "1e-06"
    finally:
        rx.stop()


def test_spool_is_bounded(tmp):
    """Collector down, spool capped below what is recorded: the spool stays
    under its cap, the overflow is said, and what it kept is replayed once."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"                               # nothing listens: the collector is down
    spool = tmp / "spool"
    cap = 150_000

    def spooled():
        files = [p for p in spool.iterdir() if p.is_file()]
        return sum(int(p.name.rsplit("-", 1)[1].split(".")[0]) for p in files), sum(p.stat().st_size for p in files)
    logs = []
    with tally.Tally(memory=True, otlp_endpoint=url, otlp_spool_dir=str(spool), otlp_spool_max_bytes=cap,
                     otlp_backoff_ms=50, log=lambda lv, m: logs.append(m)) as t:
        for b in range(8):
            for i in range(100):
                t.request(model="m", prompt_tokens=i, completion_tokens=1, latency_us=1, request_id=f"r{b}-{i}")
            t.flush()
        assert t.counters()["dropped"] == 0                        # the program's events were all written
    kept, size = spooled()
    assert size <= cap and 0 < kept < 800
    assert any("is full" in m for m in logs)
    rx = Receiver(port=port)
    try:
        with tally.Tally(memory=True, otlp_endpoint=url, otlp_spool_dir=str(spool), otlp_backoff_ms=50):
            assert wait_for(lambda: len(rx.accepted_spans) >= kept, 20)
        assert len(rx.accepted_spans) == kept and not rx.errors
    finally:
        rx.stop()
