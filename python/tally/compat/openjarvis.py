"""Drop-in telemetry for OpenJarvis programs: ``TelemetryStore``,
``TelemetryAggregator`` and ``instrumented_generate``.

``TelemetryStore(db_path)`` records each ``TelemetryRecord`` (any object
with its attributes) as a tally request in a tally database at
``db_path``: model_id, engine, tokens, latency, ttft, cost, energy and GPU
utilisation become tally's own fields; every other attribute (agent,
power, ITL percentiles, prefill / decode split, metadata, ...) is kept in
the event's extra, so nothing is lost.

``TelemetryAggregator(db_path)`` answers ``per_model_stats``,
``per_engine_stats`` and ``summary`` with ``tally stats`` over that
database (or over an OpenJarvis database), with OpenJarvis's definitions:
the same figures its own aggregator gives for the same records.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Sequence

import tally

# TelemetryRecord's attributes that are tally fields, and how.
_SECONDS_TO_US = 1_000_000
_EXTRA_ATTRS = (
    "timestamp", "agent", "prompt_tokens_evaluated", "total_tokens", "power_watts", "gpu_memory_used_gb",
    "gpu_temperature_c", "throughput_tok_per_sec", "prefill_latency_seconds", "decode_latency_seconds",
    "energy_method", "energy_vendor", "batch_id", "is_warmup", "cpu_energy_joules", "gpu_energy_joules",
    "dram_energy_joules", "tokens_per_joule", "energy_per_output_token_joules", "throughput_per_watt",
    "prefill_energy_joules", "decode_energy_joules", "mean_itl_ms", "median_itl_ms", "p90_itl_ms", "p95_itl_ms",
    "p99_itl_ms", "std_itl_ms", "is_streaming", "metadata",
)

_stores: List["weakref.ref[TelemetryStore]"] = []


def _live_stores() -> List["TelemetryStore"]:
    """The open stores of this process, oldest first."""
    live = [r() for r in _stores]
    _stores[:] = [weakref.ref(s) for s in live if s is not None and not s.tally.closed]
    return [s for s in live if s is not None and not s.tally.closed]


def _num(v, default=0):
    return default if v is None else v


def request_fields(rec: Any) -> Dict[str, Any]:
    """The tally request for one TelemetryRecord (keywords of Tally.request)."""
    g = lambda name, default=None: getattr(rec, name, default)  # noqa: E731
    f: Dict[str, Any] = {
        "model": g("model_id") or "unknown",
        "engine": g("engine") or None,
        "prompt_tokens": int(_num(g("prompt_tokens"))),
        "completion_tokens": int(_num(g("completion_tokens"))),
        "latency_us": round(float(_num(g("latency_seconds"))) * _SECONDS_TO_US),
    }
    ttft = g("ttft")
    if ttft:
        f["ttft_us"] = round(float(ttft) * _SECONDS_TO_US)
    cost = g("cost_usd")
    if cost:
        f["cost_nusd"] = round(float(cost) * 1e9)
    energy = g("energy_joules")
    if energy:
        f["energy_j"] = float(energy)
    gpu = g("gpu_utilization_pct")
    if gpu is not None:
        f["gpu_util_pct"] = float(gpu)            # zeros too: OpenJarvis averages them
    stages = {}
    for stage in ("prefill", "decode"):
        s = g(stage + "_latency_seconds")
        if s:
            stages[stage] = round(float(s) * _SECONDS_TO_US)
    if stages:
        f["stages"] = stages
    extra = {}
    for name in _EXTRA_ATTRS:
        v = g(name)
        if v is None or v == "" or (name == "metadata" and not v):
            continue
        extra[name] = v
    if extra:
        f["extra_json"] = extra
    return f


class TelemetryStore:
    """Append-only telemetry store: a tally database at ``db_path``."""

    def __init__(self, db_path: str, **config: Any) -> None:
        self.db_path = str(db_path)
        self.tally = tally.Tally(sqlite_path=self.db_path, **config)
        _stores.append(weakref.ref(self))

    def record(self, rec: Any) -> None:
        """Persists one telemetry record (written by tally's writer thread)."""
        self.tally.request(**request_fields(rec))

    def flush(self) -> None:
        self.tally.flush()

    def close(self) -> None:
        self.tally.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


@dataclass
class ModelStats:
    model_id: str = ""
    call_count: int = 0
    total_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_latency: float = 0.0
    avg_latency: float = 0.0
    total_cost: float = 0.0
    avg_ttft: float = 0.0
    total_energy_joules: float = 0.0
    avg_gpu_utilization_pct: float = 0.0
    avg_throughput_tok_per_sec: float = 0.0


@dataclass
class EngineStats:
    engine: str = ""
    call_count: int = 0
    total_tokens: int = 0
    total_latency: float = 0.0
    avg_latency: float = 0.0
    total_cost: float = 0.0
    avg_ttft: float = 0.0
    total_energy_joules: float = 0.0
    avg_gpu_utilization_pct: float = 0.0
    avg_throughput_tok_per_sec: float = 0.0


@dataclass
class AggregatedStats:
    total_calls: int = 0
    total_tokens: int = 0
    total_cost: float = 0.0
    total_latency: float = 0.0
    per_model: List[ModelStats] = field(default_factory=list)
    per_engine: List[EngineStats] = field(default_factory=list)


def _iso(ts: Optional[float]) -> Optional[str]:
    if ts is None:
        return None
    return datetime.fromtimestamp(float(ts), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _f(v) -> float:
    return 0.0 if v is None else float(v)


class TelemetryAggregator:
    """Per-model, per-engine and overall figures from a telemetry database
    (tally's or OpenJarvis's), computed by ``tally stats``."""

    def __init__(self, db_path: str) -> None:
        self.db_path = str(db_path)

    def _groups(self, by: Optional[str], since: Optional[float], until: Optional[float]) -> List[dict]:
        for s in _live_stores():                # what this process recorded, first
            if s.db_path == self.db_path:
                s.flush()
        args = [sys.executable, "-m", "tally", "stats", "--json"]
        if by:
            args += ["--by", by]
        if since is not None:
            args += ["--since", _iso(since)]
        if until is not None:
            args += ["--until", _iso(until)]
        r = subprocess.run(args + [self.db_path], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("tally stats: " + r.stderr.strip())
        return [g for g in json.loads(r.stdout)["groups"] if g.get("requests")]

    @staticmethod
    def _common(g: dict) -> Dict[str, Any]:
        n = g["requests"]
        ttft_mean_s = _f(g.get("ttft_avg_ms")) / 1e3
        return dict(
            call_count=n,
            total_tokens=g["total_tokens"],
            total_latency=_f(g.get("latency_total_s")),
            avg_latency=_f(g.get("latency_mean_ms")) / 1e3,
            total_cost=_f(g.get("cost_usd")),
            # OpenJarvis averages ttft over every call, 0 where none was measured
            avg_ttft=ttft_mean_s * g.get("ttft_requests", 0) / n if n else 0.0,
            total_energy_joules=_f(g.get("energy_j")),
            avg_gpu_utilization_pct=_f(g.get("gpu_util_avg_pct")),
            avg_throughput_tok_per_sec=_f(g.get("throughput_tok_s")),
        )

    def per_model_stats(self, since: Optional[float] = None, until: Optional[float] = None) -> List[ModelStats]:
        return [ModelStats(model_id=g["model"], prompt_tokens=g["prompt_tokens"],
                           completion_tokens=g["completion_tokens"], **self._common(g))
                for g in self._groups("model", since, until)]

    def per_engine_stats(self, since: Optional[float] = None, until: Optional[float] = None) -> List[EngineStats]:
        return [EngineStats(engine=g["engine"], **self._common(g)) for g in self._groups("engine", since, until)]

    def summary(self, since: Optional[float] = None, until: Optional[float] = None) -> AggregatedStats:
        total = self._groups(None, since, until)
        t = self._common(total[0]) if total else None
        return AggregatedStats(
            total_calls=t["call_count"] if t else 0,
            total_tokens=t["total_tokens"] if t else 0,
            total_cost=t["total_cost"] if t else 0.0,
            total_latency=t["total_latency"] if t else 0.0,
            per_model=self.per_model_stats(since, until),
            per_engine=self.per_engine_stats(since, until),
        )


def _usage(result: Any) -> Dict[str, Any]:
    if isinstance(result, dict):
        u = result.get("usage") or {}
        return u if isinstance(u, dict) else {}
    return {}


def instrumented_generate(engine: Any, messages: Sequence[Any], *, model: str, bus: Any = None,
                          temperature: float = 0.7, max_tokens: int = 1024, **kwargs: Any) -> Dict[str, Any]:
    """Calls ``engine.generate(messages, model=..., temperature=...,
    max_tokens=..., **kwargs)`` and records the call: latency, tokens from
    the result's ``usage``, ttft when the result has one, the exception's
    type when it raises (and re-raises it).  Returns the result unchanged.

    bus: where the record goes -- a TelemetryStore, a tally.Tally, or None
    (the TelemetryStore opened last in this process, if any)."""
    if bus is None:
        stores = _live_stores()
        bus = stores[-1] if stores else None
    handle = bus.tally if isinstance(bus, TelemetryStore) else bus
    engine_id = getattr(engine, "engine_id", None) or type(engine).__name__
    t0 = time.perf_counter_ns()
    try:
        result = engine.generate(messages, model=model, temperature=temperature, max_tokens=max_tokens, **kwargs)
    except Exception as e:
        if handle is not None:
            handle.request(model=model, engine=engine_id, latency_us=(time.perf_counter_ns() - t0) // 1000,
                           error=type(e).__name__, extra_json={"message": str(e)[:1000]})
        raise
    latency_us = (time.perf_counter_ns() - t0) // 1000
    if handle is not None:
        u = _usage(result)
        fields = dict(model=model, engine=engine_id, latency_us=latency_us,
                      prompt_tokens=int(u.get("prompt_tokens") or 0),
                      completion_tokens=int(u.get("completion_tokens") or 0),
                      sampling_json={"temperature": temperature, "max_tokens": max_tokens})
        ttft = result.get("ttft") if isinstance(result, dict) else None
        if ttft:
            fields["ttft_us"] = round(float(ttft) * _SECONDS_TO_US)
        cost = result.get("cost_usd") if isinstance(result, dict) else None
        if cost:
            fields["cost_nusd"] = round(float(cost) * 1e9)
        handle.request(**fields)
    return result
