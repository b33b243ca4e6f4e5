"""Drop-in training callbacks: ``TelemetryLogger`` and ``MemoryLogger``.

The same constructor and hooks as the callbacks they replace
(``on_step_begin(step, context)``, ``on_step_end``, ``on_epoch_begin``,
``on_epoch_end``, ``on_error(error, context)``).  ``TelemetryLogger``
writes through tally: a step or an epoch becomes one timed ``step`` /
``epoch`` event (the context as its metrics; ``loss``, ``lr``,
``grad_norm`` and ``tokens`` as the step's own fields), an error an
``error`` event.  The file is JSON Lines that ``tally stats`` reads.
``MemoryLogger().records`` is the plain list of tagged dicts, as before.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import tally

_STEP_FIELDS = ("loss", "lr", "grad_norm", "tokens")


def _step_fields(context: Mapping[str, Any]):
    """Splits a step's context into tally's step fields and the rest."""
    info, metrics = {}, {}
    for k, v in dict(context).items():
        if k in _STEP_FIELDS and not isinstance(v, bool):
            try:
                num = int(v) if k == "tokens" else float(v)
            except (TypeError, ValueError, OverflowError):
                metrics[k] = v
                continue
            info[k] = num
            continue
        metrics[k] = v
    return info, metrics


class TelemetryLogger:
    """Training telemetry written through tally.

    path: the JSON Lines file (parent directories are created).
    flush_interval: the writer writes after this many events (minimum 1)
    or after 5 seconds, whichever comes first; everything is written at
    interpreter exit or ``close()``.
    """

    def __init__(self, path: str | Path = "telemetry.jsonl", flush_interval: int = 1, **config: Any):
        self._path = Path(path)
        self._flush_every = max(1, int(flush_interval))
        self._path.parent.mkdir(parents=True, exist_ok=True)
        config.setdefault("phase", "train")
        self.tally = tally.Tally(path=str(self._path), flush_events=self._flush_every, flush_ms=5000, **config)

    def on_step_begin(self, step: int, context: Mapping[str, Any]) -> None:
        self.tally.step_begin(int(step))

    def on_step_end(self, step: int, context: Mapping[str, Any]) -> None:
        info, metrics = _step_fields(context)
        self.tally.step_end(int(step), metrics_json=metrics or None, **info)

    def on_epoch_begin(self, epoch: int, context: Mapping[str, Any]) -> None:
        self.tally.epoch_begin(int(epoch))

    def on_epoch_end(self, epoch: int, context: Mapping[str, Any]) -> None:
        self.tally.epoch_end(int(epoch), dict(context) or None)

    def on_error(self, error: Exception, context: Mapping[str, Any]) -> None:
        self.tally.error(type(error).__name__, str(error), phase="train")

    def flush(self) -> None:
        self.tally.flush()

    def close(self) -> None:
        self.tally.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.tally.__exit__(*exc)
        return False


class MemoryLogger:
    """Collects tagged records in memory (``records``), for tests and
    debugging: ``{"tag": "step_end", "step": 0, "context": {...}}``, ..."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def _log(self, tag: str, payload: Mapping[str, Any]) -> None:
        self.records.append({"tag": tag, **payload})

    def on_step_begin(self, step: int, context: Mapping[str, Any]) -> None:
        self._log("step_begin", {"step": int(step)})

    def on_step_end(self, step: int, context: Mapping[str, Any]) -> None:
        self._log("step_end", {"step": int(step), "context": dict(context)})

    def on_epoch_begin(self, epoch: int, context: Mapping[str, Any]) -> None:
        self._log("epoch_begin", {"epoch": int(epoch)})

    def on_epoch_end(self, epoch: int, context: Mapping[str, Any]) -> None:
        self._log("epoch_end", {"epoch": int(epoch), "context": dict(context)})

    def on_error(self, error: Exception, context: Mapping[str, Any]) -> None:
        self._log("error", {"type": type(error).__name__, "message": str(error)})
