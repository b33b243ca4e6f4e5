"""The Python API over libtally: every call, its types, its promises."""
import os
import re
import threading
import time

import pytest

import tally
from conftest import ASAN, ROOT, fork_children, read_events, requests_of, run_python, tally_cli


def c_members(struct):
    """The member names of a struct in include/tally.h."""
    with open(os.path.join(ROOT, "include", "tally.h"), encoding="utf-8") as f:
        text = f.read()
    body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (struct, struct), text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = []
    for decl in body.split(";"):
        decl = decl.strip()
        if not decl:
            continue
        decl = re.sub(r"^(const\s+)?\w+\s*", "", decl)        # the type
        for part in decl.split(","):
            names.append(part.strip().lstrip("*").strip())
    return [n for n in names if n]


def test_every_config_member_is_a_keyword(tmp):
    members = c_members("tally_config")
    assert len(members) >= 30 and "sqlite_path" in members and "subscriber_ud" in members
    for m in members:
        assert m in tally.CONFIG_FIELDS or m in ("log", "log_ud", "subscriber", "subscriber_ud"), m
        t = tally.Tally(**{m: None})          # accepted: None is "not given"
        t.close()


def test_every_request_member_is_a_keyword():
    members = c_members("tally_request")
    assert "model" in members and "finish_reason" in members
    for m in members:
        if m == "n_stages":                      # implied by stages
            continue
        assert m in tally.REQUEST_FIELDS, m


def test_config_values_take_effect(tmp):
    seen = []
    with tally.Tally(path="e.jsonl", sqlite="t.db", model="llama", run_id="my-run", phase="train",
                     host="h1", backend="cuda", backend_device="H100", git_sha="abc", git_branch="main",
                     git_dirty=True, config_json={"lr": 0.1}, flush_events=1, flush_ms=10,
                     queue_bytes=1 << 20, max_threads=8, max_string=100, memory_max_events=5,
                     memory=True, subscriber=seen.append) as t:
        assert t.run_id == "my-run" and t.enabled
        t.note("x" * 500)
        for _ in range(10):
            t.note("n")
        assert t.flush()
        assert len(t.events()) == 5                        # memory_max_events
        assert t.counters()["sinks_lost"]["memory"] > 0
    ev = read_events("e.jsonl")
    start = ev[0]
    assert start["run_id"] == "my-run" and start["host"]["name"] == "h1"
    assert start["backend"] == {"kind": "cuda", "device": "H100"}
    assert start["model"]["name"] == "llama" and start["config"] == {"lr": 0.1}
    assert start["git"]["sha"] == "abc" and start["git"]["dirty"] is True
    assert len(ev[1]["text"].encode()) <= 100 and "truncated" in ev[1]
    assert os.path.exists("t.db")
    assert seen[0].startswith('{"kind":"run_start"') and '"kind":"run_end"' in seen[-1]


def test_request_fields_reach_the_line(tmp):
    with tally.Tally(path="e.jsonl") as t:
        t.request(model="llama-3.1-8b", engine="vllm", provider="vllm", prompt_tokens=812, cached_tokens=512,
                  completion_tokens=128, latency_us=2_350_000, ttft_us=180_000, finish_reason="stop",
                  request_id="r1", route="chat", principal_id="u1", provider_request_id="p1",
                  prompt_version="v2", cache_write_tokens=3, reasoning_tokens=4, energy_j=1.5,
                  gpu_util_pct=0.0, cost_nusd=1200, cost_input_nusd=1000, cost_output_nusd=200,
                  stages={"queue": 10, "prefill": 20}, degraded="web_failed", flags=tally.ESCALATED,
                  sampling_json={"temperature": 0.7}, extra_json={"tenant": "a"}, text="hidden",
                  begin_token=None, device=0)
        t.request(model="m", prompt_tokens=1, completion_tokens=2, latency_us=3, error="timeout")
        t.request(model="m", prompt_tokens=1, completion_tokens=2, latency_us=3, cost_nusd=0)
    r = requests_of(read_events("e.jsonl"))
    x = r[0]["extra"]
    for k, v in dict(model="llama-3.1-8b", engine="vllm", provider="vllm", prompt_tokens=812, cached_tokens=512,
                     completion_tokens=128, latency_us=2_350_000, ttft_us=180_000, finish_reason="stop",
                     request_id="r1", route="chat", principal_id="u1", provider_request_id="p1",
                     prompt_version="v2", cache_write_tokens=3, reasoning_tokens=4, energy_j=1.5,
                     gpu_util_pct=0.0, cost_nusd=1200, degraded="web_failed", escalated=True,
                     ok=True).items():
        assert x[k] == v, (k, x.get(k))
    assert x["stage_us"] == {"queue": 10, "prefill": 20}
    assert x["sampling"] == {"temperature": 0.7} and x["tenant"] == "a"
    assert "text" not in x                          # capture_text is off
    assert r[1]["extra"]["ok"] is False and r[1]["extra"]["error"] == "timeout"
    assert r[2]["extra"]["cost_nusd"] == 0          # a given zero is written


def test_numbers_accept_what_python_programs_have(tmp):
    class Scalar:                                   # a numpy scalar / 0-d tensor stand-in
        def __float__(self):
            return 2.5

        def __index__(self):
            return 7
    with tally.Tally(path="e.jsonl") as t:
        t.request(model="m", prompt_tokens=Scalar(), completion_tokens=3.0, latency_us=1234.6, energy_j=Scalar(),
                  gpu_util_pct=50)
    x = requests_of(read_events("e.jsonl"))[0]["extra"]
    assert x["prompt_tokens"] == 7 and x["completion_tokens"] == 3 and x["latency_us"] == 1235
    assert x["energy_j"] == 2.5 and x["gpu_util_pct"] == 50


@pytest.mark.parametrize("call,needle", [
    (lambda t: t.request(model=3), "model must be str, not int"),
    (lambda t: t.request(model="m", prompt_tokens="12"), "prompt_tokens must be an int, not str"),
    (lambda t: t.request(model="m", latency_us=True), "latency_us must be an int, not bool"),
    (lambda t: t.request(model="m", energy_j="1"), "energy_j must be a number, not str"),
    (lambda t: t.request(model="m", stages=[1]), "stages must be a dict"),
    (lambda t: t.request(model="m", extra_json=object()), None),
    (lambda t: t.request(model="m", modle="x"), "unexpected keyword argument 'modle'"),
    (lambda t: t.request("m"), "keyword arguments only"),
    (lambda t: t.step_begin("1"), "step must be an int"),
    (lambda t: t.step_end(1, loss="x"), "loss must be a number"),
    (lambda t: t.step_end(1, bogus=1), "unexpected keyword argument 'bogus'"),
    (lambda t: t.note(5), "text must be str"),
    (lambda t: t.eval("val", loss="x"), "loss must be a number"),
    (lambda t: t.error(5, "x"), "type must be str"),
    (lambda t: t.event(5), "kind must be str"),
])
def test_wrong_types_raise_type_error_naming_the_field(tmp, call, needle):
    with tally.Tally(path="e.jsonl") as t:
        if needle is None:                           # str() of any object is JSON-safe: accepted
            call(t)
            return
        with pytest.raises(TypeError, match=re.escape(needle)):
            call(t)
        assert t.counters()["offered"] == 0          # nothing half-recorded


def test_unknown_config_keyword(tmp):
    with pytest.raises(TypeError, match="unexpected keyword argument 'pth'"):
        tally.Tally(pth="x.jsonl")
    with pytest.raises(TypeError, match="flush_ms must be an int"):
        tally.Tally(path="e.jsonl", flush_ms="10")
    with pytest.raises(TypeError, match="subscriber must be callable"):
        tally.Tally(path="e.jsonl", subscriber=5)


def test_timed_request(tmp):
    with tally.Tally(path="e.jsonl") as t:
        with t.timed_request(model="llama", engine="vllm") as r:
            time.sleep(0.02)
            r.first_token()
            time.sleep(0.01)
            r.prompt_tokens, r.completion_tokens = 812, 128
            assert r.prompt_tokens == 812
            with pytest.raises(AttributeError):
                r.prompt_tokenz = 1
            with pytest.raises(TypeError, match="completion_tokens"):
                r.completion_tokens = "many"
        with pytest.raises(ValueError):
            with t.timed_request(model="llama") as r:
                raise ValueError("bad")
    req = requests_of(read_events("e.jsonl"))
    x = req[0]["extra"]
    assert 30_000 <= x["latency_us"] < 2_000_000 and 20_000 <= x["ttft_us"] < x["latency_us"]
    assert x["prompt_tokens"] == 812 and x["completion_tokens"] == 128 and x["engine"] == "vllm"
    assert req[1]["extra"]["ok"] is False and req[1]["extra"]["error"] == "ValueError"


def test_training_calls(tmp):
    with tally.Tally(path="e.jsonl", phase="train") as t:
        with t.epoch(0) as ep:
            for i in range(3):
                with t.step(i) as s:
                    time.sleep(0.001)
                    s.loss, s.lr, s.grad_norm, s.tokens = 2.0 - i * 0.5, 1e-3, 0.25, 1024
                    s.acc = 0.5
            ep.val_loss = 1.0
        t.eval("val", loss=1.9, ppl=6.7, samples=512, split="dev")
        with pytest.raises(RuntimeError):
            with t.step(3) as s:
                raise RuntimeError("nan in grads")
        with t.step(4) as s:
            s.loss = float("nan")
        t.error(KeyError("k"))
        t.error("oom", "CUDA out of memory", step=9)
        t.note("hello")
        t.event("checkpoint", path="/tmp/x", step=4, ok=True, size=1.5, tags=["a", "b"], none=None)
    ev = read_events("e.jsonl")
    steps = [e for e in ev if e["kind"] == "step"]
    assert [s["step"] for s in steps] == [0, 1, 2, 3, 4]
    assert steps[0]["loss"] == 2.0 and steps[0]["lr"] == 1e-3 and steps[0]["tokens"] == 1024
    assert steps[0]["metrics"] == {"acc": 0.5} and steps[0]["wall_us"] >= 1000
    assert steps[3].get("unfinished") is True           # the step whose body raised
    assert steps[4]["loss"] is None                     # a diverged step
    epoch = [e for e in ev if e["kind"] == "epoch"][0]
    assert epoch["metrics"] == {"val_loss": 1.0} and "wall_us" in epoch
    evals = [e for e in ev if e["kind"] == "eval" and e.get("phase") == "eval"]
    assert evals[0]["loss"] == 1.9 and evals[0]["samples"] == 512
    errors = [e for e in ev if e["kind"] == "error"]
    assert errors[0]["type"] == "RuntimeError" and errors[0]["message"] == "nan in grads" and errors[0]["step"] == 3
    assert errors[1]["type"] == "KeyError" and errors[2]["step"] == 9
    ck = [e for e in ev if e["kind"] == "checkpoint"][0]
    assert ck["path"] == "/tmp/x" and ck["ok"] is True and ck["tags"] == ["a", "b"] and ck["none"] is None


@pytest.mark.parametrize("exc,reason", [(None, "completed"), (RuntimeError, "errored"),
                                        (KeyboardInterrupt, "interrupted")])
def test_with_block_reason(tmp, exc, reason):
    try:
        with tally.Tally(path="e.jsonl") as t:
            t.note("x")
            if exc:
                raise exc()
    except BaseException as e:
        assert isinstance(e, exc)
    end = read_events("e.jsonl")[-1]
    assert end["kind"] == "run_end" and end["reason"] == reason


def test_close_with_reason_and_after_close(tmp):
    t = tally.Tally(path="e.jsonl")
    t.note("x")
    t.close("aborted", exit_code=3)
    t.close()                                    # twice: nothing
    t.note("after")                              # after close: nothing, no error
    t.request(model="m")
    assert t.closed
    ev = read_events("e.jsonl")
    assert ev[-1]["reason"] == "aborted" and ev[-1]["exit_code"] == 3 and len(ev) == 3


def test_counters_rule_and_failing_sink(tmp):
    logs = []
    with tally.Tally(path="no/such/dir/\0x" if False else "/proc/nope/e.jsonl", memory=True,
                     log=lambda level, msg: logs.append((level, msg))) as t:
        for i in range(100):
            t.request(model="m", prompt_tokens=i, completion_tokens=1, latency_us=5)
        t.flush()
        c = t.counters()
        assert c["offered"] == c["written"] + c["dropped"] == 100
        assert c["requests"] == 100 and c["tokens_out"] == 100
        assert c["sinks_lost"]["jsonl"] > 0 and c["sinks_lost"]["memory"] == 0
        assert len(t.events()) == 100 + 1
    assert logs and "nope" in logs[0][1]


def test_events_memory_sink(tmp):
    with tally.Tally(memory=True) as t:
        t.request(model="m", prompt_tokens=1, completion_tokens=2, latency_us=3)
        ev = t.events()
        assert [e["kind"] for e in ev] == ["run_start", "eval"]
        assert ev[1]["extra"]["model"] == "m"


def test_disabled(tmp, monkeypatch):
    monkeypatch.setenv("TALLY_DISABLE", "1")
    with tally.Tally(path="e.jsonl") as t:
        assert not t.enabled
        t.request(model="m")
    assert not os.path.exists("e.jsonl")


def test_env_path_overrides(tmp, monkeypatch):
    monkeypatch.setenv("TALLY_PATH", "env.jsonl")
    with tally.Tally(path="e.jsonl") as t:
        t.note("x")
    assert os.path.exists("env.jsonl") and not os.path.exists("e.jsonl")


def test_subscriber_never_deadlocks(tmp):
    """The subscriber waits for a lock the recording thread holds while it
    flushes: the flush still completes (the writer never waits for Python)."""
    lock = threading.Lock()
    got = []

    def sub(line):
        with lock:
            got.append(line)
    with tally.Tally(path="e.jsonl", subscriber=sub) as t:
        with lock:
            for _ in range(1000):
                t.note("x")
            start = time.monotonic()
            assert t.flush(2000) is True
            assert time.monotonic() - start < 2.0
        t.flush()
    assert len(got) == 1002 and '"run_end"' in got[-1]


def test_subscriber_exception_is_reported_not_raised(tmp, monkeypatch):
    seen = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: seen.append(u.exc_type))

    def bad(line):
        raise ValueError("subscriber bug")
    with tally.Tally(memory=True, subscriber=bad) as t:
        t.note("x")
    assert seen and seen[0] is ValueError


def test_threads_all_events_present(tmp):
    n, per = 4, 100_000
    with tally.Tally(path="e.jsonl", queue_bytes=64 << 20) as t:
        def work(k):
            for i in range(per):
                t.request(model="m", engine=f"e{k}", prompt_tokens=i, completion_tokens=1, latency_us=1)
        ths = [threading.Thread(target=work, args=(k,)) for k in range(n)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        t.flush()
        c = t.counters()
    assert c["dropped"] == 0 and c["written"] == n * per
    req = requests_of(read_events("e.jsonl"))
    assert len(req) == n * per
    for k in range(n):
        seq = [r["extra"]["prompt_tokens"] for r in req if r["extra"]["engine"] == f"e{k}"]
        assert seq == list(range(per))                # every event, once, in order per thread


@pytest.mark.skipif(ASAN, reason="ASan's allocator is not fork-safe (as the C fork test)")
def test_fork_children_summed(tmp):
    with tally.Tally(path="e.jsonl") as t:
        t.request(model="parent", prompt_tokens=1, completion_tokens=1, latency_us=1)
        def work(k):
            for i in range(100):
                t.request(model=f"child{k}", prompt_tokens=1, completion_tokens=1, latency_us=1)
        fork_children(t, 3, work)
    ev = read_events("e.jsonl")
    ends = [e for e in ev if e["kind"] == "run_end"]
    assert len(ends) == 1 and ends[0]["stats"]["requests"] == 301
    assert len(requests_of(ev)) == 301


@pytest.mark.skipif(ASAN, reason="ASan's allocator is not fork-safe (as the C fork test)")
def test_multiprocessing_fork_children(tmp):
    code = """
import multiprocessing as mp, tally
t = tally.Tally(path="e.jsonl")
def work(k):
    for i in range(1000):
        t.request(model="w%d" % k, prompt_tokens=1, completion_tokens=1, latency_us=1)
if __name__ == "__main__":
    ctx = mp.get_context("fork")
    ps = [ctx.Process(target=work, args=(k,)) for k in range(3)]
    [p.start() for p in ps]; [p.join() for p in ps]
    t.close()
"""
    run_python(code, tmp)
    ev = read_events(tmp / "e.jsonl")
    assert len(requests_of(ev)) == 3000
    ends = [e for e in ev if e["kind"] == "run_end"]
    assert len(ends) == 1 and ends[0]["stats"]["requests"] == 3000 and ends[0]["stats"]["lost"] == 0


def test_interpreter_exit_without_close(tmp):
    code = """
import tally
got = open("sub.txt", "w")
t = tally.Tally(path="e.jsonl", queue_bytes=64 << 20, subscriber=lambda line: got.write(line + "\\n"))
for i in range(20000):
    t.request(model="m", prompt_tokens=i, completion_tokens=1, latency_us=1)
"""
    run_python(code, tmp)
    ev = read_events(tmp / "e.jsonl")
    assert len(requests_of(ev)) == 20000
    assert ev[-1]["kind"] == "run_end" and ev[-1]["reason"] == "completed"
    assert ev[-1]["stats"]["dropped"] == 0
    sub = (tmp / "sub.txt").read_text().splitlines()
    assert len(sub) == 20002 and '"run_end"' in sub[-1]


def test_uncaught_exception_reason(tmp):
    r = run_python("import tally\nt = tally.Tally(path='e.jsonl')\nt.note('x')\nraise SystemError('boom')\n",
                   tmp, check=False)
    assert r.returncode != 0
    assert read_events(tmp / "e.jsonl")[-1]["reason"] == "errored"


def test_tally_command_from_the_package(tmp):
    with tally.Tally(path="e.jsonl") as t:
        for i in range(10):
            t.request(model="llama", prompt_tokens=10, completion_tokens=5, latency_us=1000)
    r = tally_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == "tally " + tally.__version__
    r = tally_cli("stats", "--json", "e.jsonl", cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert '"requests":10' in r.stdout.replace(" ", "")
    r = tally_cli("nosuch")
    assert r.returncode == 2 and "unknown command" in r.stderr
