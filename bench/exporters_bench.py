#!/usr/bin/env python3
"""The exporters' costs: what the recording call pays with /metrics and OTLP
on, how fast spans reach a collector, how long a scrape of 1,000 series
takes.

    PYTHONPATH=build/python python3 bench/exporters_bench.py [--build build] [--spans N] [--tries K]

Cases, in this run:
  record_call   build/bench/record_bench --only-exporters --otlp URL: the
                recording call's p50 / p99 with the endpoint and the OTLP
                exporter on (to a local receiver), against the plain call in
                the same process (tries interleaved; its own medians)
  otlp_spans    N request events recorded through the Python package with
                OTLP on; spans/s from the first call until the receiver has
                taken every span (median of tries)
  scrape_1000   GET /metrics with 1,000 series of tally_requests_total
                (and their GenAI histograms): median time of 50 scrapes
A local receiver answers 200 and counts spans; it decompresses every
body, so spans/s is a floor of what the exporter can do.  A case that
fails raises: no figure is printed for it.
"""
import argparse
import gzip
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tally


class Counter:
    def __init__(self):
        self.spans = 0
        self.posts = 0
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True      # one segment per answer: no delayed-ACK stalls
            wbufsize = 1 << 16

            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                if self.path == "/v1/traces":
                    n = raw.count(b'"spanId"')
                    with outer.lock:
                        outer.spans += n
                        outer.posts += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def record_call(build, url, calls):
    exe = os.path.join(build, "bench", "record_bench")
    r = subprocess.run([exe, "--calls", str(calls), "--only-exporters", "--otlp", url], capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError("record_bench failed: " + r.stderr)
    line = [l for l in r.stdout.splitlines() if l.startswith("case=request_exporters")]
    if not line:
        raise RuntimeError("record_bench printed no exporters case:\n" + r.stdout)
    return dict(kv.split("=", 1) for kv in line[0].split())


def otlp_spans(n, tmpdir):
    rx = Counter()
    try:
        t0 = time.perf_counter()
        with tally.Tally(path=os.path.join(tmpdir, "e.jsonl"), otlp_endpoint=rx.url, queue_bytes=256 << 20,
                         otlp_metrics_interval_ms=3600_000) as t:
            for i in range(n):
                t.request(model="llama", engine="vllm", prompt_tokens=100, completion_tokens=20, latency_us=250_000,
                          ttft_us=20_000, finish_reason="stop")
            t.flush()
            deadline = time.monotonic() + 300
            while rx.spans < n and time.monotonic() < deadline:
                time.sleep(0.005)
            dt = time.perf_counter() - t0
            c = t.counters()
        if rx.spans != n or c["sinks_lost"]["otlp"]:
            raise RuntimeError(f"receiver took {rx.spans} of {n} spans; lost {c['sinks_lost']}")
        return n / dt, rx.posts
    finally:
        rx.stop()


def scrape_1000(tmpdir):
    with tally.Tally(memory=True, memory_max_events=10, metrics_listen="127.0.0.1:0", metrics_series_cap=2000) as t:
        for m in range(100):
            for e in range(10):
                t.request(model=f"model-{m}", engine=f"engine-{e}", provider="p", prompt_tokens=100,
                          completion_tokens=20, latency_us=250_000)
        t.flush()
        url = f"http://127.0.0.1:{t.metrics_port}/metrics"
        body = urllib.request.urlopen(url).read()
        series = sum(1 for l in body.splitlines() if l.startswith(b"tally_requests_total{"))
        if series != 1000:
            raise RuntimeError(f"{series} series of tally_requests_total, not 1000")
        times = []
        for _ in range(50):
            s = time.perf_counter()
            urllib.request.urlopen(url).read()
            times.append(time.perf_counter() - s)
        return statistics.median(times) * 1e3, len(body)


def main():
    ap = argparse.ArgumentParser(description="exporters' costs")
    ap.add_argument("--build", default="build")
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--calls", type=int, default=200_000, help="record_bench calls per try")
    ap.add_argument("--tries", type=int, default=3)
    args = ap.parse_args()
    import tempfile
    rx = Counter()
    try:
        rc = record_call(args.build, rx.url, args.calls)
    finally:
        rx.stop()
    print(f"record_call: plain p50 {rc['plain_p50_ns']} ns p99 {rc['plain_p99_ns']} ns; with /metrics + OTLP "
          f"p50 {rc['exporters_p50_ns']} ns p99 {rc['exporters_p99_ns']} ns; ratio {rc['ratio_vs_plain']} "
          f"(target <= 1.2)")
    rates = []
    for _ in range(args.tries):
        with tempfile.TemporaryDirectory() as d:
            rate, posts = otlp_spans(args.spans, d)
            rates.append(rate)
    print(f"otlp_spans: {statistics.median(rates):,.0f} spans/s into a local receiver "
          f"(median of {args.tries}, {args.spans} spans, {posts} posts)")
    with tempfile.TemporaryDirectory() as d:
        ms, size = scrape_1000(d)
    print(f"scrape_1000: {ms:.2f} ms per scrape (median of 50), {size / 1024:.0f} KiB")


if __name__ == "__main__":
    sys.exit(main())
