"""The ClickHouse sink against a real ClickHouse (Debian's clickhouse-server,
started on 127.0.0.1 by tests/clickhouse.sh with its config and data in a
temporary directory): rows equal the JSONL file, outages lose nothing and
duplicate nothing, the spool is replayed by the next process, a batch the
server refuses is set aside with its message, credentials stay out of logs
and argv."""
import base64
import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.error
import urllib.request

import pytest

import tally
from conftest import ROOT, free_port, run_python, tally_cli, wait_for

SCRIPT = os.path.join(ROOT, "tests", "clickhouse.sh")


class Server:
    def __init__(self, d):
        self.dir = d
        self.http, self.tcp = free_port(), free_port()
        self.start()
        self.password = (d / "password").read_text()

    # Programs that are not ours are not to be sanitised: under the ASan run
    # the interpreter has libasan preloaded, which clickhouse-server, curl
    # and ps must not inherit (they hang with it).
    ENV = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}

    def start(self):
        subprocess.run(["bash", SCRIPT, "start", str(self.dir), str(self.http), str(self.tcp)], check=True,
                       timeout=120, env=self.ENV)

    def stop(self):
        subprocess.run(["bash", SCRIPT, "stop", str(self.dir)], check=True, timeout=60, env=self.ENV)

    def url(self, db):
        return f"clickhouse://127.0.0.1:{self.http}/{db}"

    def q(self, sql):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}/", data=sql.encode())
        req.add_header("Authorization", "Basic " + base64.b64encode(f"tally:{self.password}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{sql}: {e.read().decode()[:500]}") from None

    def count(self, db, final=True):
        try:
            return int(self.q(f"SELECT count() FROM {db}.events {'FINAL' if final else ''}"))
        except Exception:
            return -1


@pytest.fixture(scope="module")
def ch(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("clickhouse"))
    yield s
    s.stop()


@pytest.fixture
def creds(ch, monkeypatch):
    for k in ("TALLY_CLICKHOUSE", "TALLY_CLICKHOUSE_SPOOL", "TALLY_CLICKHOUSE_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("TALLY_CLICKHOUSE_USER", "tally")
    monkeypatch.setenv("TALLY_CLICKHOUSE_PASSWORD_FILE", str(ch.dir / "password"))


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def record_mix(t, n, model_of=lambda i: f"m{i % 3}"):
    for i in range(n):
        t.request(model=model_of(i), engine="e" + str(i % 2), route="r", prompt_tokens=i, completion_tokens=i % 50 + 1,
                  latency_us=1000 + i * 7, ttft_us=100 + i, error="Timeout" if i % 17 == 0 else None,
                  degraded="web_failed" if i % 23 == 0 else None)


def stats_agree(a, b, path=""):
    """Counts and sums equal (floats to 1e-9), percentiles within the
    sketch's 1%."""
    if isinstance(a, dict):
        keys = set(a) | set(b)
        keys.discard("rollup_cells")
        for k in keys:
            assert k in a and k in b, f"{path}.{k} missing"
            stats_agree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            stats_agree(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        tol = 0.01 if any(p in path for p in ("_p50", "_p90", "_p99")) else 1e-9
        assert abs(a - b) <= tol * max(abs(a), abs(b)), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_rows_equal_the_file_and_stats_agree(ch, creds, tmp):
    with tally.Tally(path="a.jsonl", clickhouse=ch.url("live"), prices=os.path.join(ROOT, "examples", "prices.json")) as t:
        record_mix(t, 3000)
        with t.step(1) as s:
            s.loss = 2.5
        t.error("ValueError", "bad batch")
        t.flush()
        # a flush means the rows are in ClickHouse
        assert ch.count("live") == len(lines("a.jsonl"))
        lost = t.counters()["sinks_lost"]["clickhouse"]
    assert lost == 0
    file_lines = lines("a.jsonl")
    rows = ch.q("SELECT json FROM live.events FINAL ORDER BY id FORMAT TabSeparatedRaw").splitlines()
    assert sorted(rows) == sorted(file_lines)                  # each event once, the line itself
    cols = json.loads("[" + ",".join(ch.q("SELECT id, model, engine, prompt_tokens, latency_us, ok, error "
                                         "FROM live.events FINAL WHERE name = 'request' FORMAT JSONEachRow")
                                    .splitlines()) + "]")
    by_id = {c["id"]: c for c in cols}
    reqs = [json.loads(x) for x in file_lines]
    reqs = [e for e in reqs if e.get("name") == "request"]
    assert len(by_id) == len(reqs) == 3000
    for e in reqs:                                             # field by field
        c = by_id[e["id"]]
        x = e["extra"]
        assert (c["model"], c["engine"], int(c["prompt_tokens"]), float(c["latency_us"])) == \
            (x["model"], x["engine"], x["prompt_tokens"], x["latency_us"])
        assert c["ok"] == (0 if x.get("ok") is False else 1)
    # stats asked of the server (cells) = stats of the file = stats of the rows read back
    for args in (["--by", "model,engine"], ["--by", "route,ok", "--where", "engine=e1"], ["--by", "degraded,hour"],
                 ["--by", "run", "--where", "model!=m2", "--since", "1h"], []):
        a = tally_cli("stats", "--json", *args, ch.url("live"), cwd=tmp)
        b = tally_cli("stats", "--json", *args, "a.jsonl", cwd=tmp)
        c = tally_cli("stats", "--json", "--scan", *args, ch.url("live"), cwd=tmp)
        assert a.returncode == 0 and b.returncode == 0 and c.returncode == 0, a.stderr + b.stderr + c.stderr
        pushed = json.loads(a.stdout)
        assert pushed["rollup_cells"] > 0                       # the server answered
        stats_agree(pushed, json.loads(b.stdout))
        stats_agree(pushed, json.loads(c.stdout))


def test_server_stopped_mid_run_every_event_once(ch, creds, tmp):
    logs = []
    stop = threading.Event()
    with tally.Tally(path="b.jsonl", clickhouse=ch.url("outage"), clickhouse_backoff_ms=100,
                     log=lambda lv, m: logs.append(m)) as t:
        def work():
            i = 0
            while not stop.is_set():
                t.request(model="m", prompt_tokens=i, completion_tokens=1, latency_us=100)
                i += 1
                if i % 100 == 0:
                    time.sleep(0.01)
        th = threading.Thread(target=work)
        th.start()
        assert wait_for(lambda: ch.count("outage") > 0, 20)
        ch.stop()
        time.sleep(3)
        ch.start()
        time.sleep(2)
        stop.set()
        th.join()
        t.flush()
        c = t.counters()
    n = len(lines("b.jsonl"))
    assert c["dropped"] == 0 and c["sinks_lost"]["clickhouse"] == 0
    assert any("cannot be reached" in m for m in logs)
    assert wait_for(lambda: ch.count("outage") == n, 30), (ch.count("outage"), n)
    assert int(ch.q("SELECT uniqExact(id) FROM outage.events")) == n
    ids = set(json.loads(x)["id"] for x in lines("b.jsonl"))
    assert set(ch.q("SELECT id FROM outage.events FINAL FORMAT TabSeparatedRaw").split()) == ids


def test_stopped_at_close_the_next_process_replays_the_spool(ch, creds, tmp):
    ch.stop()
    try:
        first = f"""
import tally, time
t = tally.Tally(path="c.jsonl", clickhouse="{ch.url('later')}", clickhouse_backoff_ms=50)
for i in range(500):
    t.request(model="early", prompt_tokens=i, completion_tokens=1, latency_us=1)
start = time.monotonic()
t.close()
print(time.monotonic() - start)
"""
        took = float(run_python(first, tmp).stdout.split()[-1])
        assert took < 8                                       # a server that is away does not hold close long
    finally:
        ch.start()
    spool = tmp / "c.jsonl.clickhouse-spool"
    files = [p for p in spool.iterdir() if p.is_file()]
    assert files and not any(".sending-" in p.name for p in files)
    second = f"""
import tally
t = tally.Tally(path="c.jsonl", clickhouse="{ch.url('later')}", clickhouse_backoff_ms=50)
for i in range(10):
    t.request(model="late", prompt_tokens=i, completion_tokens=1, latency_us=1)
t.close()
"""
    run_python(second, tmp)
    n = len(lines(tmp / "c.jsonl"))                           # 2 runs: 510 requests, their run_start and run_end
    assert n == 514
    assert wait_for(lambda: ch.count("later") == n, 20), ch.count("later")
    early = ch.q("SELECT count() FROM later.events FINAL WHERE model = 'early'")
    assert int(early) == 500
    assert not [p for p in spool.iterdir() if p.is_file()]    # replayed and removed


def test_refused_batch_is_set_aside_with_the_servers_message(ch, creds, tmp):
    # tally's tables, then one column changed so that tally's rows cannot be parsed
    with tally.Tally(memory=True, clickhouse=ch.url("refuse")) as t:
        t.request(model="m", prompt_tokens=1, completion_tokens=1, latency_us=1)
    ch.q("CREATE TABLE refuse.empty AS refuse.events")
    ch.q("DROP TABLE refuse.events")
    ch.q("RENAME TABLE refuse.empty TO refuse.events")
    ch.q("ALTER TABLE refuse.events MODIFY COLUMN route UInt8")
    logs = []
    with tally.Tally(path="d.jsonl", clickhouse=ch.url("refuse"), clickhouse_backoff_ms=50,
                     log=lambda lv, m: logs.append(m)) as t:
        for i in range(200):
            t.request(model="m", route="web", prompt_tokens=i, completion_tokens=1, latency_us=1)
        t.flush()
        assert wait_for(lambda: t.counters()["sinks_lost"]["clickhouse"] >= 201, 20)
        c = t.counters()
    assert c["dropped"] == 0 and c["sinks_lost"]["clickhouse"] == 201 + 0  # run_start + 200, sent once
    assert len(lines("d.jsonl")) >= 201                        # the file lost nothing
    msg = [m for m in logs if "refused a batch" in m]
    assert msg and "Cannot parse" in msg[0], logs
    rej = tmp / "d.jsonl.clickhouse-spool" / "rejected"
    kept = sorted(p.name for p in rej.iterdir())
    assert any(n.endswith(".reason") for n in kept) and any(not n.endswith(".reason") for n in kept)
    reason = next(rej.glob("*.reason")).read_text()
    assert "Cannot parse" in reason
    bodies = [p.read_text() for p in rej.iterdir() if not p.name.endswith(".reason")]
    assert 201 in [b.count("\n") for b in bodies]              # the batch as it was, for a person to look at
    # nothing of the refused batch went in (the run_end after it has no route: it could)
    assert int(ch.q("SELECT count() FROM refuse.events WHERE name = 'request'")) == 0


def test_credentials_never_in_logs_or_argv(ch, creds, tmp, monkeypatch):
    secret = ch.password
    # the right password from a file: the process's argv and environment listing never shows it
    code = f"""
import tally, time, sys
t = tally.Tally(path="e.jsonl", clickhouse="{ch.url('creds')}")
t.request(model="m", prompt_tokens=1, completion_tokens=1, latency_us=1)
t.flush()
print("ready", flush=True)
sys.stdin.readline()
t.close()
"""
    env = dict(os.environ)
    p = subprocess.Popen([__import__("sys").executable, "-c", code], cwd=tmp, env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, env=Server.ENV, timeout=60).stdout
    cmdline = open(f"/proc/{p.pid}/cmdline", "rb").read().decode(errors="replace")
    p.stdin.write("\n")
    p.stdin.flush()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert secret not in ps and secret not in cmdline and secret not in err
    first = len(lines(tmp / "e.jsonl"))
    assert ch.count("creds") == first == 3
    # a wrong password: said so without the password; rows wait in the spool for the right one
    monkeypatch.delenv("TALLY_CLICKHOUSE_PASSWORD_FILE")
    monkeypatch.setenv("TALLY_CLICKHOUSE_PASSWORD", "wrong-" + secret[:6] + "-pw")
    logs = []
    with tally.Tally(path="f.jsonl", clickhouse=ch.url("creds"), clickhouse_backoff_ms=50,
                     log=lambda lv, m: logs.append(m)) as t:
        for i in range(20):
            t.request(model="m", prompt_tokens=i, completion_tokens=1, latency_us=1)
        t.flush()
        assert wait_for(lambda: any("Wrong password" in m for m in logs), 10), logs
    text = "\n".join(logs)
    assert "wrong-" not in text and secret not in text
    assert ch.count("creds") == first
    monkeypatch.delenv("TALLY_CLICKHOUSE_PASSWORD")
    monkeypatch.setenv("TALLY_CLICKHOUSE_PASSWORD_FILE", str(ch.dir / "password"))
    with tally.Tally(path="f.jsonl", clickhouse=ch.url("creds"), clickhouse_backoff_ms=50) as t:
        pass
    n = first + len(lines(tmp / "f.jsonl"))
    assert wait_for(lambda: ch.count("creds") == n, 20), (ch.count("creds"), n)
    # a URL that carries credentials is refused, and the refusal does not repeat them
    r = tally_cli("stats", f"clickhouse://tally:{secret}@127.0.0.1:{ch.http}/creds", cwd=tmp)
    assert r.returncode != 0 and secret not in r.stderr + r.stdout
