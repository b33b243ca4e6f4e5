#!/usr/bin/env python3
"""Cost of recording one request from Python, against the loggers it replaces.

    PYTHONPATH=build/python python3 bench/python_bench.py [--calls N] [--tries K]

Cases, all in this process, on the same request (8 fields):
  tally_1t     t.request(...) from one thread (JSONL sink, writer thread)
  tally_2t     the same from two threads at once
  tagged_f1    a tagged-line logger's write path, as the training callbacks
               did it: a dict per event, buffered, the file opened and every
               buffered entry json.dumps'ed and written every flush_interval
               events -- flush_interval=1
  tagged_f100  the same with flush_interval=100
  json_write   json.dumps + write to a file kept open (no buffer logic)

Per-call times are taken with perf_counter_ns around each call, minus the
median cost of an empty timed call measured in the same run; mean_ns is
wall time over the calls (what a program pays in all, flushes included).
Each case runs --tries times; figures are the medians over tries.  Ratios
are against tally_1t's mean.  A case that fails raises: no figure is
printed for it.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import tally

REQ = dict(model="llama-3.1-8b", engine="vllm", prompt_tokens=812, completion_tokens=128,
           latency_us=2_350_000, ttft_us=180_000, finish_reason="stop", request_id="r1")


def timed_loop(fn, n):
    """Per-call ns (with the timer's own cost in it) and total ns."""
    pc = time.perf_counter_ns
    out = [0] * n
    start = pc()
    for i in range(n):
        a = pc()
        fn()
        out[i] = pc() - a
    return out, pc() - start


def timer_cost(n):
    samples, _ = timed_loop(lambda: None, n)
    return statistics.median(samples)


def pct(sorted_vals, q):
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def case_tally(dirpath, n, threads):
    with tally.Tally(path=os.path.join(dirpath, "events.jsonl"), queue_bytes=64 << 20) as t:
        req = t.request
        results = [None] * threads
        barrier = threading.Barrier(threads)

        def work(k):
            req(**REQ)              # the thread's first event allocates its queue: not timed
            barrier.wait()
            results[k] = timed_loop(lambda: req(**REQ), n)
        ths = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        t.flush()
        c = t.counters()
    if c["dropped"] or c["written"] != (n + 1) * threads:
        raise RuntimeError(f"tally case lost events: {c}")
    lines = sum(1 for _ in open(os.path.join(dirpath, "events.jsonl")))
    if lines != (n + 1) * threads + 2:
        raise RuntimeError(f"tally case wrote {lines} lines, expected {(n + 1) * threads + 2}")
    samples = [s for r in results for s in r[0]]
    total = max(r[1] for r in results)
    return samples, total / (n * threads)


class TaggedLogger:
    """The write path of a tagged-line training logger: buffer dicts, and
    every flush_interval entries (or 5 s) open the file in append mode and
    write each as json.dumps + newline."""

    def __init__(self, path, flush_interval):
        self.path = Path(path)
        self.every = max(1, int(flush_interval))
        self.buf = []
        self.last = time.time()

    def record(self, tag, payload):
        self.buf.append({"ts": time.time(), "tag": tag, **payload})
        now = time.time()
        if len(self.buf) >= self.every or now - self.last > 5.0:
            self.flush()
            self.last = now

    def flush(self):
        if not self.buf:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for e in self.buf:
                f.write(json.dumps(e) + "\n")
        self.buf.clear()


def case_tagged(dirpath, n, every):
    lg = TaggedLogger(os.path.join(dirpath, f"tagged{every}.jsonl"), every)
    samples, total = timed_loop(lambda: lg.record("request", REQ), n)
    lg.flush()
    return samples, total / n


def case_json_write(dirpath, n):
    with open(os.path.join(dirpath, "plain.jsonl"), "w", encoding="utf-8") as f:
        w, dumps = f.write, json.dumps
        samples, total = timed_loop(lambda: w(dumps(REQ) + "\n"), n)
    return samples, total / n


def main():
    ap = argparse.ArgumentParser(description="ns per recorded request from Python")
    ap.add_argument("--calls", type=int, default=200_000, help="calls per case and thread (default 200000)")
    ap.add_argument("--tries", type=int, default=5, help="runs of every case; medians are reported (default 5)")
    ap.add_argument("--dir", default=None, help="where the files go (default: a temporary directory)")
    args = ap.parse_args()
    cases = [
        ("tally_1t", lambda d: case_tally(d, args.calls, 1)),
        ("tally_2t", lambda d: case_tally(d, args.calls, 2)),
        ("tagged_f1", lambda d: case_tagged(d, max(1, args.calls // 10), 1)),
        ("tagged_f100", lambda d: case_tagged(d, args.calls, 100)),
        ("json_write", lambda d: case_json_write(d, args.calls)),
    ]
    got = {name: {"p50": [], "p99": [], "mean": []} for name, _ in cases}
    for _ in range(args.tries):
        base = timer_cost(100_000)
        for name, fn in cases:
            with tempfile.TemporaryDirectory(dir=args.dir) as d:
                samples, mean = fn(d)
            samples.sort()
            got[name]["p50"].append(max(0, pct(samples, 0.50) - base))
            got[name]["p99"].append(max(0, pct(samples, 0.99) - base))
            got[name]["mean"].append(max(0.0, mean - base))
    med = {name: {k: statistics.median(v) for k, v in d.items()} for name, d in got.items()}
    ref = med["tally_1t"]["mean"]
    print(f"python {sys.version.split()[0]}, tally {tally.__version__}, calls={args.calls}, tries={args.tries}")
    print(f"{'case':<12} {'p50_ns':>8} {'p99_ns':>8} {'mean_ns':>9} {'mean_vs_tally_1t':>17}")
    for name, _ in cases:
        m = med[name]
        print(f"{name:<12} {m['p50']:>8.0f} {m['p99']:>8.0f} {m['mean']:>9.0f} {m['mean'] / ref:>17.2f}")
    speedup = med["tagged_f100"]["mean"] / ref
    print(f"target p50 <= 700 ns (tally_1t): {'met' if med['tally_1t']['p50'] <= 700 else 'NOT met'}; "
          f"tally vs tagged logger at flush_interval=100: {speedup:.1f}x "
          f"({'met' if speedup >= 5 else 'NOT met'}, target 5x)")


if __name__ == "__main__":
    main()
