"""The drop-in replacements: training callbacks and OpenJarvis telemetry."""
import json
import time
from types import SimpleNamespace

import pytest

from conftest import read_events, requests_of, run_python, tally_cli
from tally.compat.callbacks import MemoryLogger, TelemetryLogger
from tally.compat import openjarvis as oj


def drive(logger):
    """A short training run, as a trainer calls its callbacks."""
    for epoch in range(2):
        logger.on_epoch_begin(epoch, {})
        for step in range(3):
            s = epoch * 3 + step
            logger.on_step_begin(s, {"ignored": True})
            logger.on_step_end(s, {"loss": 2.0 - 0.1 * s, "lr": 0.01, "acc": 0.5 + s / 100})
        logger.on_epoch_end(epoch, {"val_loss": 1.5 - epoch})
    logger.on_error(RuntimeError("x"), {"step": 5})


def test_memory_logger_records_are_the_originals():
    m = MemoryLogger()
    m.on_step_begin(0, {"a": 1})
    m.on_step_end(0, {"loss": 1.5})
    m.on_epoch_begin(0, {})
    m.on_epoch_end(0, {"val": 2})
    m.on_error(RuntimeError("x"), {})
    assert m.records == [
        {"tag": "step_begin", "step": 0},
        {"tag": "step_end", "step": 0, "context": {"loss": 1.5}},
        {"tag": "epoch_begin", "epoch": 0},
        {"tag": "epoch_end", "epoch": 0, "context": {"val": 2}},
        {"tag": "error", "type": "RuntimeError", "message": "x"},
    ]


def test_telemetry_logger_writes_a_file_tally_reads(tmp):
    lg = TelemetryLogger(path="out/telemetry.jsonl", flush_interval=1)
    drive(lg)
    lg.close()
    ev = read_events("out/telemetry.jsonl")
    steps = [e for e in ev if e["kind"] == "step"]
    assert [s["step"] for s in steps] == list(range(6))
    assert steps[0]["loss"] == 2.0 and steps[0]["lr"] == 0.01 and steps[0]["metrics"] == {"acc": 0.5}
    assert all("wall_us" in s for s in steps)
    epochs = [e for e in ev if e["kind"] == "epoch"]
    assert [e["metrics"] for e in epochs] == [{"val_loss": 1.5}, {"val_loss": 0.5}]
    err = [e for e in ev if e["kind"] == "error"][0]
    assert err["type"] == "RuntimeError" and err["message"] == "x"
    r = tally_cli("stats", "--json", "out/telemetry.jsonl")
    assert r.returncode == 0, r.stderr
    g = json.loads(r.stdout)["groups"][0]
    assert g["steps"] == 6 and g["epochs"] == 2 and g["loss_first"] == 2.0
    assert g["loss_last"] == pytest.approx(1.5) and g["error_events"] == 1
    assert tally_cli("validate", "out/telemetry.jsonl").returncode == 0


def test_telemetry_logger_flush_interval(tmp):
    every = TelemetryLogger(path="one.jsonl", flush_interval=1)
    batched = TelemetryLogger(path="hundred.jsonl", flush_interval=100)
    for lg in (every, batched):
        for s in range(10):
            lg.on_step_begin(s, {})
            lg.on_step_end(s, {"loss": 1.0})

    def steps_in(p):
        try:
            return sum(1 for e in read_events(p) if e["kind"] == "step")
        except FileNotFoundError:
            return 0
    deadline = time.monotonic() + 3
    while steps_in("one.jsonl") < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert steps_in("one.jsonl") == 10          # written without a close
    assert steps_in("hundred.jsonl") == 0       # still batched (< 100 events, < 5 s)
    batched.close()
    every.close()
    assert steps_in("hundred.jsonl") == 10


def test_telemetry_logger_at_interpreter_exit(tmp):
    run_python("""
from tally.compat.callbacks import TelemetryLogger
lg = TelemetryLogger(path="t.jsonl", flush_interval=100)
for s in range(250):
    lg.on_step_begin(s, {}); lg.on_step_end(s, {"loss": 1.0 / (s + 1)})
""", tmp)
    ev = read_events(tmp / "t.jsonl")
    assert sum(1 for e in ev if e["kind"] == "step") == 250 and ev[-1]["kind"] == "run_end"


# ---- OpenJarvis ---------------------------------------------------------------

def make_records(n=60):
    models = ["llama-3.1-8b", "qwen2.5-7b", "mistral-7b"]
    engines = ["vllm", "ollama"]
    recs = []
    for i in range(n):
        prompt, completion = 100 + 7 * i, 20 + 3 * i
        latency = 0.25 + 0.013 * i                       # seconds, to the microsecond
        latency = round(latency, 6)
        recs.append(SimpleNamespace(
            timestamp=time.time(), model_id=models[i % 3], engine=engines[i % 2], agent="planner",
            prompt_tokens=prompt, prompt_tokens_evaluated=prompt - 5, completion_tokens=completion,
            total_tokens=prompt + completion, latency_seconds=latency,
            ttft=round(0.05 + 0.001 * i, 6) if i % 4 else 0.0, cost_usd=round(0.0001 * (i + 1), 9),
            energy_joules=1.5 * (i % 5), power_watts=300.0, gpu_utilization_pct=float((i * 7) % 100),
            gpu_memory_used_gb=12.5, gpu_temperature_c=60.0, throughput_tok_per_sec=completion / latency,
            prefill_latency_seconds=0.02, decode_latency_seconds=latency - 0.02, energy_method="nvml",
            energy_vendor="nvidia", batch_id=f"b{i // 10}", is_warmup=i == 0, cpu_energy_joules=0.5,
            gpu_energy_joules=1.0, dram_energy_joules=0.1, tokens_per_joule=3.0,
            energy_per_output_token_joules=0.2, throughput_per_watt=0.3, prefill_energy_joules=0.4,
            decode_energy_joules=0.6, mean_itl_ms=11.0, median_itl_ms=10.0, p90_itl_ms=15.0, p95_itl_ms=17.0,
            p99_itl_ms=22.0, std_itl_ms=2.0, is_streaming=bool(i % 4), metadata={"trace": i}))
    return recs


def expected(recs, key):
    """OpenJarvis's aggregator definitions, computed here independently."""
    out = {}
    for r in recs:
        out.setdefault(getattr(r, key), []).append(r)
    res = {}
    for k, rs in out.items():
        n = len(rs)
        res[k] = dict(call_count=n, total_tokens=sum(r.total_tokens for r in rs),
                      total_latency=sum(r.latency_seconds for r in rs),
                      avg_latency=sum(r.latency_seconds for r in rs) / n,
                      total_cost=sum(r.cost_usd for r in rs), avg_ttft=sum(r.ttft for r in rs) / n,
                      total_energy_joules=sum(r.energy_joules for r in rs),
                      avg_gpu_utilization_pct=sum(r.gpu_utilization_pct for r in rs) / n,
                      avg_throughput_tok_per_sec=sum(r.throughput_tok_per_sec for r in rs) / n,
                      prompt_tokens=sum(r.prompt_tokens for r in rs),
                      completion_tokens=sum(r.completion_tokens for r in rs))
    return res


def test_openjarvis_store_and_aggregator(tmp):
    recs = make_records()
    store = oj.TelemetryStore("telemetry.db", path="events.jsonl")
    for r in recs:
        store.record(r)
    agg = oj.TelemetryAggregator("telemetry.db")
    per_model = agg.per_model_stats()                 # flushes the open store first
    want = expected(recs, "model_id")
    assert sorted(m.model_id for m in per_model) == sorted(want)
    for m in per_model:
        w = want[m.model_id]
        for k, v in w.items():
            assert getattr(m, k) == pytest.approx(v, rel=1e-9, abs=1e-9), (m.model_id, k)
    per_engine = agg.per_engine_stats()
    want = expected(recs, "engine")
    for e in per_engine:
        for k, v in want[e.engine].items():
            if hasattr(e, k):
                assert getattr(e, k) == pytest.approx(v, rel=1e-9, abs=1e-9), (e.engine, k)
    s = agg.summary()
    assert s.total_calls == len(recs) and s.total_tokens == sum(r.total_tokens for r in recs)
    assert s.total_cost == pytest.approx(sum(r.cost_usd for r in recs), rel=1e-9)
    assert len(s.per_model) == 3 and len(s.per_engine) == 2
    assert agg.per_model_stats(since=time.time() + 3600) == []
    assert len(agg.per_model_stats(since=time.time() - 3600, until=time.time() + 3600)) == 3
    store.close()
    # nothing OpenJarvis recorded is lost: every attribute is in the event
    req = requests_of(read_events("events.jsonl"))
    assert len(req) == len(recs)
    x = req[7]["extra"]
    r = recs[7]
    for name in oj._EXTRA_ATTRS:
        v = getattr(r, name)
        if v in (None, "", {}):
            continue
        assert x[name] == v, name
    assert x["model"] == r.model_id and x["stage_us"]["prefill"] == 20000


class FakeEngine:
    engine_id = "fake"

    def __init__(self, fail=False):
        self.fail = fail
        self.calls = []

    def generate(self, messages, **kw):
        self.calls.append((messages, kw))
        if self.fail:
            raise ConnectionError("engine down")
        return {"content": "hi", "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}}


def test_instrumented_generate(tmp):
    store = oj.TelemetryStore("t.db", path="e.jsonl")
    eng = FakeEngine()
    msgs = [{"role": "user", "content": "hello"}]
    out = oj.instrumented_generate(eng, msgs, model="llama", bus=store, temperature=0.2, max_tokens=64, top_p=0.9)
    assert out == {"content": "hi", "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}}
    assert eng.calls[0] == (msgs, {"model": "llama", "temperature": 0.2, "max_tokens": 64, "top_p": 0.9})
    with pytest.raises(ConnectionError):
        oj.instrumented_generate(FakeEngine(fail=True), msgs, model="llama")     # bus: the open store
    store.close()
    req = requests_of(read_events("e.jsonl"))
    assert len(req) == 2
    ok, bad = req[0]["extra"], req[1]["extra"]
    assert ok["engine"] == "fake" and ok["prompt_tokens"] == 12 and ok["completion_tokens"] == 4 and ok["ok"]
    assert ok["sampling"] == {"temperature": 0.2, "max_tokens": 64}
    assert bad["ok"] is False and bad["error"] == "ConnectionError" and bad["message"] == "engine down"
