"""tally: telemetry for machine-learning programs.

    import tally
    with tally.Tally(path="events.jsonl", model="llama-3.1-8b") as t:
        t.request(model="llama-3.1-8b", engine="vllm", prompt_tokens=812,
                  completion_tokens=128, latency_us=2_350_000)

The recording calls are libtally's (a C extension, linked in): keywords are
the C structs' member names, a wrong type raises TypeError at the call, and
nothing else ever raises -- a full queue or a failing disk is counted
(``counters()``), never thrown at the caller.  docs/python.md has the whole
API.
"""

import atexit
import json
import logging
import math
import os
import sys
import threading
import time
import weakref

from . import _tally
from ._tally import (CACHE_HIT, CEILING_HIT, CONFIG_FIELDS, ESCALATED, FAILED, FALLBACK,  # noqa: F401
                     REQUEST_FIELDS, USER_CAP_HIT, check_request, cli)

__all__ = ["Tally", "TimedRequest", "Step", "Epoch", "REQUEST_FIELDS", "CONFIG_FIELDS", "check_request",
           "ESCALATED", "FALLBACK", "CACHE_HIT", "CEILING_HIT", "USER_CAP_HIT", "FAILED", "__version__"]
__version__ = _tally.version

_log = logging.getLogger("tally")
_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR}


def _jsonable(o):
    """What json cannot encode by itself: numbers that know how to be one
    (numpy scalars, 0-d tensors), then anything by its str()."""
    for conv in (float, int):
        try:
            v = conv(o)
            return None if isinstance(v, float) and not math.isfinite(v) else v
        except Exception:
            pass
    return str(o)


_encoder = json.JSONEncoder(separators=(",", ":"), default=_jsonable, ensure_ascii=False)


def _json_dumps(o):
    return _encoder.encode(o)


_tally._set_json(_json_dumps)

# Short names beside the C ones, for the common sinks.
_ALIASES = {"sqlite": "sqlite_path", "prices": "prices_path", "memory": "memory_sink"}
_PY_CONFIG = ("log", "log_ud", "subscriber", "subscriber_ud")

_open = weakref.WeakSet()


class Tally(_tally.Handle):
    """A tally handle.  Every field of libtally's ``tally_config`` is a
    keyword (``path``, ``run_dir``, ``sqlite_path`` or ``sqlite``,
    ``prices_path`` or ``prices``, ``energy``, ``model``, ``memory_sink`` or
    ``memory``, ...); environment switches (TALLY_PATH, TALLY_DB,
    TALLY_DISABLE, ...) keep working.

    ``subscriber=fn`` gets every event line (a str) on a thread of the
    package, never on one that holds tally's locks; ``log=fn`` gets
    ``(level, message)`` for tally's own warnings (default: the ``tally``
    logger).  With ``subscriber_ud`` / ``log_ud`` given, it is passed first,
    as in C.
    """

    def __init__(self, **config):
        for short, name in _ALIASES.items():
            if short in config:
                if name in config:
                    raise TypeError(f"Tally(): {short} and {name} are the same setting")
                config[name] = config.pop(short)
        sub, sub_ud = config.pop("subscriber", None), config.pop("subscriber_ud", None)
        logfn, log_ud = config.pop("log", None), config.pop("log_ud", None)
        for name, fn in (("subscriber", sub), ("log", logfn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"Tally(): {name} must be callable, not {type(fn).__name__}")
        if sub is not None and sub_ud is not None:
            sub = _bind(sub, sub_ud)
        if logfn is not None and log_ud is not None:
            logfn = _bind(logfn, log_ud)
        self._subscriber = sub
        self._logfn = logfn
        self._delivery = None
        self._lock = threading.Lock()
        super().__init__(_inbox_events=sub is not None, _inbox_log=True, **config)
        self._start_delivery()
        _open.add(self)

    # ---- delivery of subscriber lines and log messages ----------------
    def _start_delivery(self):
        th = threading.Thread(target=self._deliver, name="tally-deliver", daemon=True)
        self._delivery = th
        th.start()

    def _deliver(self):
        while True:
            items = self._take(0.5)
            if items is None:
                return
            for kind, level, text in items:
                try:
                    if kind == 0:
                        if self._subscriber is not None:
                            self._subscriber(text)
                    elif self._logfn is not None:
                        self._logfn(level, text)
                    else:
                        _log.log(_LEVELS.get(level, logging.WARNING), "%s", text)
                except Exception:
                    sys.unraisablehook(_Unraisable(sys.exc_info(), "tally subscriber", self._subscriber))

    def _after_fork_child(self):
        if not self.closed:
            self._start_delivery()
            _watch_child_exit(self)

    # ---- recording ------------------------------------------------------
    def timed_request(self, device=0, **fields):
        """A request timed by tally: latency_us from enter to exit,
        ``first_token()`` sets ttft_us, energy is attributed while it is in
        flight.  Fields are keywords here or attributes of the object."""
        return TimedRequest(self, device, fields)

    def step(self, step):
        """A timed training step: ``s.loss``, ``s.lr``, ``s.grad_norm``,
        ``s.tokens`` and any other attribute (a metric) are written at exit."""
        return Step(self, step)

    def epoch(self, epoch):
        """A timed epoch; attributes set on it are its metrics."""
        return Epoch(self, epoch)

    def eval(self, name="eval", loss=None, ppl=None, samples=None, **extra):
        """A training-time eval: loss, perplexity, samples and any extra fields."""
        self._eval(name, loss, ppl, samples, extra or None)

    def error(self, error, message=None, *, phase=None, step=None, request_id=None):
        """``error(exc)`` records an exception's type and message;
        ``error("type", "message")`` records them as given."""
        if isinstance(error, BaseException):
            etype, msg = type(error).__name__, str(error) if message is None else message
        else:
            etype, msg = error, message
        self._error(etype, msg, phase, step, request_id)

    def events(self):
        """The memory sink's events as dicts (``memory=True``), after a flush."""
        self.flush()
        return [json.loads(line) for line in self._lines()]

    # ---- closing ----------------------------------------------------------
    def close(self, reason=None, exit_code=None):
        """Writes what is queued and run_end, then stops.  reason:
        "completed" (None), "interrupted", "aborted" or "errored"."""
        with self._lock:
            if self.closed:
                return
            self._close(reason, exit_code)
            _open.discard(self)
            self._close_inbox()
            th = self._delivery
        if th is not None and th is not threading.current_thread() and th.is_alive():
            th.join()

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        reason, code = _reason_for(etype, exc)
        self.close(reason, code)
        return False

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return f"<tally.Tally {self.run_id!r} {state}>"


def _bind(fn, ud):
    return lambda *args: fn(ud, *args)


class _Unraisable:
    def __init__(self, exc_info, msg, obj):
        self.exc_type, self.exc_value, self.exc_traceback = exc_info
        self.err_msg = "Exception in " + msg
        self.object = obj


def _reason_for(etype, exc):
    if etype is None:
        return None, None
    if issubclass(etype, KeyboardInterrupt):
        return "interrupted", None
    if issubclass(etype, SystemExit):
        code = exc.code if exc is not None else None
        if code is None or code == 0:
            return None, 0
        return "errored", code if isinstance(code, int) else 1
    if issubclass(etype, GeneratorExit):
        return None, None
    return "errored", None


class TimedRequest:
    """``with t.timed_request(model=...) as r:`` -- see Tally.timed_request."""

    __slots__ = ("_t", "_device", "_fields", "_t0", "_ttft_us", "_token")

    def __init__(self, t, device, fields):
        check_request(**fields)
        object.__setattr__(self, "_t", t)
        object.__setattr__(self, "_device", device)
        object.__setattr__(self, "_fields", fields)
        object.__setattr__(self, "_t0", None)
        object.__setattr__(self, "_ttft_us", None)
        object.__setattr__(self, "_token", 0)

    def __enter__(self):
        object.__setattr__(self, "_token", self._t.request_begin(self._device))
        object.__setattr__(self, "_t0", time.perf_counter_ns())
        return self

    def first_token(self):
        """Marks the first token: ttft_us is the time since enter (once)."""
        if self._ttft_us is None and self._t0 is not None:
            object.__setattr__(self, "_ttft_us", (time.perf_counter_ns() - self._t0) // 1000)

    def __setattr__(self, name, value):
        if name not in REQUEST_FIELDS:
            raise AttributeError(f"a request has no field {name!r}")
        check_request(**{name: value})
        self._fields[name] = value

    def __getattr__(self, name):
        if name in REQUEST_FIELDS:
            return self._fields.get(name)
        raise AttributeError(name)

    def __exit__(self, etype, exc, tb):
        f = self._fields
        if self._t0 is not None:
            f.setdefault("latency_us", (time.perf_counter_ns() - self._t0) // 1000)
        if self._ttft_us is not None:
            f.setdefault("ttft_us", self._ttft_us)
        if etype is not None and f.get("error") is None:
            f["error"] = etype.__name__
        f["begin_token"] = self._token
        f.setdefault("device", self._device)
        self._t.request(**f)
        return False


_STEP_INFO = ("loss", "lr", "grad_norm", "tokens")


class _Span:
    """A timed step or epoch: attributes set on it are written at exit."""

    def __init__(self, t, n):
        self.__dict__["_t"] = t
        self.__dict__["_n"] = n
        self.__dict__["_metrics"] = {}

    def __setattr__(self, name, value):
        self._metrics[name] = value

    def __getattr__(self, name):
        try:
            return self.__dict__["_metrics"][name]
        except KeyError:
            raise AttributeError(name) from None


class Step(_Span):
    """``with t.step(n) as s:`` -- see Tally.step.  An exception that escapes
    is recorded as an error at this step, and the step is written
    unfinished."""

    def __enter__(self):
        self._t.step_begin(self._n)
        return self

    def __exit__(self, etype, exc, tb):
        if etype is not None:
            if issubclass(etype, Exception):
                self._t.error(exc, phase="train", step=self._n)
            return False
        m = dict(self._metrics)
        info = {k: m.pop(k) for k in _STEP_INFO if k in m}
        self._t.step_end(self._n, metrics_json=m or None, **info)
        return False


class Epoch(_Span):
    """``with t.epoch(e) as ep:`` -- attributes set on it are its metrics."""

    def __enter__(self):
        self._t.epoch_begin(self._n)
        return self

    def __exit__(self, etype, exc, tb):
        if etype is not None:
            if issubclass(etype, Exception):
                self._t.error(exc, phase="train")
            return False
        self._t.epoch_end(self._n, self._metrics or None)
        return False


# ---- the end of the interpreter, and forks ---------------------------------

def _close_all():
    """At interpreter exit: every handle still open is closed.  An uncaught
    exception (sys.last_type) makes the reason "errored" ("interrupted" for
    Ctrl-C)."""
    last = getattr(sys, "last_type", None)
    reason = None
    if last is not None:
        reason = "interrupted" if issubclass(last, KeyboardInterrupt) else "errored"
    for t in list(_open):
        try:
            t.close(reason)
        except Exception:
            pass


atexit.register(_close_all)


def _watch_child_exit(t):
    """A multiprocessing child ends with os._exit(), past atexit: its
    finalizers are where what it queued gets written."""
    mpu = sys.modules.get("multiprocessing.util")
    if mpu is None:
        return
    ref = weakref.ref(t)

    def install(_obj):
        def finish():
            h = ref()
            if h is not None:
                h.close()
        mpu.Finalize(None, finish, exitpriority=0)

    mpu.register_after_fork(t, install)


def _after_fork_child():
    for t in list(_open):
        t._after_fork_child()


os.register_at_fork(after_in_child=_after_fork_child)
