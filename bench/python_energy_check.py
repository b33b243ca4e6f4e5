#!/usr/bin/env python3
"""Energy from Python on a real GPU: tally's figures against NVML's own counter.

    python3 bench/python_energy_check.py      (an NVIDIA GPU, PyTorch with CUDA, pynvml)

Runs 40 timed requests of 40 8192x8192 matrix products each through
Tally(energy=True).timed_request, reads NVML's total-energy counter with
pynvml before and after, and prints both with the requests' share and the
idle energy (they must add up to tally's device total), plus the mean cost
of a t.request call with energy sampling on.  docs/python.md has a run.
"""
import json
import sys
import time

import pynvml
import torch

import tally
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
name = pynvml.nvmlDeviceGetName(h)
a = torch.randn(8192, 8192, device="cuda")
b = a @ a; torch.cuda.synchronize()
e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
t0 = time.time()
with tally.Tally(path="gpu.jsonl", energy=True, energy_interval_ms=100, model="matmul") as t:
    for i in range(40):
        with t.timed_request(model="matmul-8192", engine="torch") as r:
            for _ in range(40):
                b = a @ a
            torch.cuda.synchronize()
            r.first_token()
            r.prompt_tokens, r.completion_tokens = 8192, 40
        time.sleep(0.05)
    # overhead of a recording call with energy on
    n = 100000; s = time.perf_counter_ns()
    for i in range(n):
        t.request(model="m", prompt_tokens=1, completion_tokens=1, latency_us=1)
    per_call = (time.perf_counter_ns() - s) / n
e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
ev = [json.loads(l) for l in open("gpu.jsonl")]
end = ev[-1]
req = [e for e in ev if e.get("kind") == "eval" and e["extra"].get("model") == "matmul-8192"]
sum_req = sum(e["extra"].get("energy_j", 0) for e in req)
dev_total = sum(end.get("energy_j", {}).values())
idle = sum(end.get("energy_idle_j", {}).values())
out = dict(gpu=str(name), torch=torch.__version__, python=sys.version.split()[0], requests=len(req),
           nvml_delta_j=(e1 - e0) / 1000.0, tally_device_total_j=dev_total, requests_energy_j=sum_req,
           idle_j=idle, sum_plus_idle_j=sum_req + idle, seconds=time.time() - t0,
           gpu_util_pct_sample=[e["extra"].get("gpu_util_pct") for e in req[:5]],
           j_per_request_median=sorted(e["extra"].get("energy_j", 0) for e in req)[len(req) // 2],
           ns_per_request_call_energy_on=per_call, run_end_energy=end.get("energy_j"), reason=end.get("reason"))
print(json.dumps(out, indent=1))
