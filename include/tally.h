/*
 * tally.h -- the whole public API of libtally.
 *
 * tally records what a machine-learning program does (inference requests,
 * training steps, epochs, evals, errors, notes) as toy/v1 JSON Lines and
 * hands every event to the sinks it was opened with.
 *
 * Promises (see docs/api.md for the long form):
 *   - Every function accepts a NULL handle and does nothing with it.
 *   - Every function is thread-safe, except tally_close(), which must not
 *     race with other calls on the same handle (as fclose()).
 *   - No recording call blocks without bound, allocates after the calling
 *     thread's first event, raises a signal or returns an error the caller
 *     must handle.  A full queue drops the event and counts it.
 *   - Sink failures (bad path, disk full) are counted and reported once
 *     through the log callback; they never reach the caller.
 *
 * One convention for every struct: zero it (`= {0}`), set the fields you
 * have, and they are written.  An optional number is written when it is
 * non-zero; when zero is the real value, say so with its TALLY_HAS_* bit.
 * Misuse that can be seen (negative token counts, a cost breakdown that
 * does not add up) is written as given and said once through the log.
 */
#ifndef TALLY_H
#define TALLY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define TALLY_VERSION_MAJOR 0
#define TALLY_VERSION_MINOR 1
#define TALLY_VERSION_PATCH 0
#define TALLY_VERSION_STRING "0.1.0"

typedef struct tally tally_t;

/* Log levels given to the log callback. */
enum { TALLY_LOG_INFO = 0, TALLY_LOG_WARN = 1, TALLY_LOG_ERROR = 2 };

/* The library's own warnings ("cannot open runs/x/events.jsonl: ..."). Called
 * from whatever thread noticed the problem, at most once per distinct
 * problem.  Must not call back into tally. */
typedef void (*tally_log_fn)(void *ud, int level, const char *msg);

/* Subscriber: called on the writer thread with every encoded event line
 * (without the trailing newline).  Must not call back into tally. */
typedef void (*tally_event_fn)(void *ud, const char *line, size_t len);

typedef struct tally_config {
    /* Output.  `path` is a JSONL file.  When NULL or "", and `run_dir` is set,
     * events go to <run_dir>/<run_id>/events.jsonl.  With no file, no
     * database, no memory sink, no subscriber, no metrics endpoint and no
     * OTLP endpoint, the handle is disabled: no I/O and no
     * allocation after tally_open().  Environment: TALLY_PATH overrides
     * `path`; TALLY_DISABLE=1 disables whatever the config says. */
    const char *path;
    const char *run_dir;

    /* SQLite events database, beside or instead of the JSONL file
     * (docs/schema.md).  TALLY_DB overrides it.  Retention: events older
     * than `retention_max_age_s` seconds, and the oldest beyond
     * `retention_max_rows`, are deleted by the sink's database thread at
     * open and then every 100 transactions (0 = keep everything). */
    const char *sqlite_path;
    /* Price file (docs/prices.md): requests recorded without a cost are
     * costed by the writer thread at the price in effect on their day.
     * TALLY_PRICES overrides it. */
    const char *prices_path;
    int64_t retention_max_age_s;
    int64_t retention_max_rows;

    /* Energy (docs/energy.md): sample NVIDIA GPUs (NVML, loaded at run
     * time) and CPU packages / DRAM (powercap) every `energy_interval_ms`
     * (0 = 100) on a background thread, and give each request that was
     * begun with tally_request_begin() its share of the energy used while
     * it was in flight.  TALLY_ENERGY=1 turns it on. */
    int energy;
    uint32_t energy_interval_ms;

    /* Flush policy: the writer writes after `flush_events` events are
     * queued on one thread or `flush_ms` milliseconds, whichever is first.
     * 0 means the default (1000 events, 1000 ms). */
    uint32_t flush_events;
    uint32_t flush_ms;
    int fsync_on_flush;          /* fsync(2) the file after each flush */

    /* Queue: one ring per recording thread, `queue_bytes` each (rounded up
     * to a power of two; 0 = 4 MiB, about 13,000 request events).  At most `max_threads` rings (0 =
     * 1024); events from further threads are dropped and counted. */
    size_t queue_bytes;
    uint32_t max_threads;

    int capture_text;            /* store request text; off by default */
    size_t max_string;           /* longest string kept, bytes (0 = 64 KiB) */

    /* Run identity, written in run_start.  run_id is generated when NULL
     * ("serve-20261123-001", "train-..." when phase is "train"). */
    const char *run_id;
    const char *phase;           /* "serve" (default) or "train" */
    const char *host;            /* default: gethostname() */
    const char *backend;         /* backend.kind, e.g. "cuda", "cpu" */
    const char *backend_device;  /* backend.device, optional */
    const char *model;           /* model.name */
    const char *model_path;      /* model.path, optional */
    const char *config_json;     /* caller's JSON object, optional */
    const char *git_sha, *git_branch; /* optional */
    int git_dirty;

    tally_log_fn log;
    void *log_ud;

    /* In-process sinks. */
    tally_event_fn subscriber;
    void *subscriber_ud;
    int memory_sink;             /* keep events in memory (tests) */
    size_t memory_max_events;    /* 0 = 1,000,000; older events are kept,
                                    newer ones counted as sink failures */

    /* Prometheus endpoint (docs/metrics.md): "HOST:PORT" to serve /metrics
     * on (":9464" or "9464" = 127.0.0.1:9464; port 0 = any free port, see
     * tally_metrics_port()).  TALLY_METRICS_LISTEN overrides it.  At most
     * `metrics_series_cap` series per metric family (0 = 500); beyond it
     * an "_other" series takes the events. */
    const char *metrics_listen;
    uint32_t metrics_series_cap;

    /* OTLP/HTTP exporter (docs/otlp.md): the collector's base URL
     * ("http://127.0.0.1:4318"); spans go to /v1/traces, the metrics above
     * to /v1/metrics every `otlp_metrics_interval_ms` (0 = 60 s;
     * OTEL_METRIC_EXPORT_INTERVAL overrides).  TALLY_OTLP_ENDPOINT
     * overrides the URL; headers (credentials) come from
     * OTEL_EXPORTER_OTLP_HEADERS only, the service name from
     * OTEL_SERVICE_NAME.  While the collector is away, batches wait in
     * `otlp_spool_dir` (TALLY_OTLP_SPOOL; default: beside the JSONL file or
     * database, "<file>.otlp-spool") up to `otlp_spool_max_bytes`
     * (0 = 256 MiB); retries start after `otlp_backoff_ms` (0 = 1000). */
    const char *otlp_endpoint;
    const char *otlp_spool_dir;
    uint64_t otlp_spool_max_bytes;
    uint32_t otlp_backoff_ms;
    uint32_t otlp_metrics_interval_ms;

    /* ClickHouse (docs/clickhouse.md): "clickhouse://HOST:PORT/DATABASE"
     * (the HTTP interface; "clickhouses://" for TLS).  TALLY_CLICKHOUSE
     * overrides it.  Credentials come from TALLY_CLICKHOUSE_USER and
     * TALLY_CLICKHOUSE_PASSWORD or TALLY_CLICKHOUSE_PASSWORD_FILE only,
     * never from the URL.  The database and tables are made on first use;
     * rows go in batches by a thread of the sink.  While the server is
     * away, batches wait in `clickhouse_spool_dir` (TALLY_CLICKHOUSE_SPOOL;
     * default: beside the JSONL file or database, "<file>.clickhouse-spool")
     * up to `clickhouse_spool_max_bytes` (0 = 1 GiB); retries start after
     * `clickhouse_backoff_ms` (0 = 1000). */
    const char *clickhouse;
    const char *clickhouse_spool_dir;
    uint64_t clickhouse_spool_max_bytes;
    uint32_t clickhouse_backoff_ms;
} tally_config;

/* Fills `cfg` with the defaults above (everything zero / NULL). */
void tally_config_init(tally_config *cfg);

/* Opens a handle.  Never returns NULL unless memory is exhausted; a handle
 * whose output cannot be opened still works and counts its failures. */
tally_t *tally_open(const tally_config *cfg);

/* 1 when events go anywhere, 0 when disabled (or h is NULL). */
int tally_enabled(const tally_t *h);

/* The run id in use ("" for NULL). */
const char *tally_run_id(const tally_t *h);

/* Writes run_start (once).  Any other event recorded first writes it
 * implicitly; t is measured from this moment. */
void tally_run_start(tally_t *h);

/* ---- requests --------------------------------------------------------- */

/* Request flags, written only when set. */
#define TALLY_ESCALATED    (1u << 0)
#define TALLY_FALLBACK     (1u << 1)
#define TALLY_CACHE_HIT    (1u << 2)
#define TALLY_CEILING_HIT  (1u << 3)
#define TALLY_USER_CAP_HIT (1u << 4)
/* Presence bits: a zero that is a real value (non-zero values are written
 * without them). */
#define TALLY_HAS_COST     (1u << 8)   /* cost_* fields are given (a free request: 0) */
#define TALLY_HAS_ENERGY   (1u << 9)   /* energy_j is given */
#define TALLY_HAS_GPU_UTIL (1u << 10)  /* gpu_util_pct is given */
#define TALLY_FAILED       (1u << 11)  /* ok:false even without `error` */

typedef struct tally_stage {
    const char *name;
    int64_t us;
} tally_stage;

typedef struct tally_request {
    const char *model;                 /* required */
    int64_t prompt_tokens;             /* includes cached and cache-write */
    int64_t completion_tokens;         /* includes reasoning */
    int64_t latency_us;

    const char *engine, *route, *request_id, *principal_id;
    const char *provider_request_id, *prompt_version;
    const char *provider;              /* who served it: "openai", "anthropic", "vllm", ... */
    const char *finish_reason;         /* "stop", "length", "abort", "tool_calls", ... */

    int64_t cached_tokens;             /* written when > 0 */
    int64_t cache_write_tokens;        /* written when > 0 */
    int64_t reasoning_tokens;          /* written when > 0 */
    int64_t ttft_us;                   /* streaming only; 0 = not measured */

    const tally_stage *stages;         /* stage_us{name:us} */
    size_t n_stages;

    /* Cost in integer nano-USD: written when any is non-zero, or with
     * TALLY_HAS_COST (a request that really cost nothing). */
    int64_t cost_nusd;
    int64_t cost_input_nusd, cost_cached_nusd, cost_cache_write_nusd;
    int64_t cost_output_nusd, cost_reasoning_nusd;

    double energy_j;                   /* non-zero, or TALLY_HAS_ENERGY */
    double gpu_util_pct;               /* non-zero, or TALLY_HAS_GPU_UTIL */

    const char *error;                 /* set => ok:false */
    const char *degraded;              /* a stable token, e.g. "web_failed" */
    unsigned flags;

    const char *sampling_json;         /* JSON object, optional */
    const char *text;                  /* kept only with capture_text */
    const char *extra_json;            /* caller's own fields, JSON object */

    /* Energy attribution: the token tally_request_begin() returned, and
     * the device the request ran on (0 = every sampled device, k = device
     * k-1 in run_end's order).  Without a token, no energy is attributed. */
    int64_t begin_token;
    int device;
} tally_request;

/* Marks a request as in flight on `device` (see tally_request.device) for
 * energy attribution; returns the token to put in begin_token.  Without
 * energy sampling it returns a token all the same (a timestamp). */
int64_t tally_request_begin(tally_t *h, int device);

/* Records one inference request (kind "eval", phase "serve", name "request"). */
void tally_request_record(tally_t *h, const tally_request *req);

/* ---- training --------------------------------------------------------- */

/* Presence bits of tally_step_info: a zero that is a real value. */
#define TALLY_HAS_LOSS      (1u << 0)
#define TALLY_HAS_LR        (1u << 1)
#define TALLY_HAS_GRAD_NORM (1u << 2)
#define TALLY_HAS_TOKENS    (1u << 3)

typedef struct tally_step_info {
    double loss, lr, grad_norm;        /* written when non-zero (or its bit) */
    int64_t tokens;                    /* written when non-zero (or its bit) */
    const char *metrics_json;          /* JSON object, optional */
    unsigned has;                      /* TALLY_HAS_LOSS, ... for real zeros */
} tally_step_info;

/* Zeroes `info`: everything absent (the same as `= {0}`). */
void tally_step_info_init(tally_step_info *info);

/* Spans: tally times begin..end and writes one `step` / `epoch` event with
 * wall_us.  A span begun and never ended is written with "unfinished":true
 * when the next one begins (step_begin(6), step_begin(7): step 6 is
 * written unfinished) or at close.  An end whose begin was never seen is
 * written without wall_us.  A loss that is NaN or infinite (a diverged
 * step) is written as "loss":null and counted by `tally stats`. */
void tally_step_begin(tally_t *h, int64_t step);
void tally_step_end(tally_t *h, int64_t step, const tally_step_info *info);
void tally_epoch_begin(tally_t *h, int64_t epoch);
void tally_epoch_end(tally_t *h, int64_t epoch, const char *metrics_json);

/* A training-time eval (phase "eval").  NaN loss/ppl and samples < 0 are
 * left out. */
void tally_eval(tally_t *h, const char *name, double loss, double ppl,
                int64_t samples, const char *extra_json);

/* ---- errors, notes, anything else ------------------------------------- */

/* An `error` event; also counted in run_end.stats.errors. */
void tally_error(tally_t *h, const char *type, const char *message);
/* The same with context: phase (NULL = none), step (< 0 = none),
 * request_id (NULL = none). */
void tally_error_at(tally_t *h, const char *type, const char *message,
                    const char *phase, int64_t step, const char *request_id);

void tally_note(tally_t *h, const char *text);

/* A generic event: kind plus typed fields. */
enum { TALLY_FIELD_INT = 1, TALLY_FIELD_DOUBLE, TALLY_FIELD_STRING,
       TALLY_FIELD_BOOL, TALLY_FIELD_JSON };

typedef struct tally_field {
    const char *key;
    int type;
    int64_t i;          /* INT; BOOL (0/1) */
    double d;           /* DOUBLE */
    const char *s;      /* STRING; JSON (a JSON value, checked) */
} tally_field;

void tally_event(tally_t *h, const char *kind, const tally_field *fields,
                 size_t n);

/* ---- flushing, counters, closing -------------------------------------- */

/* Asks the writer to write everything queued so far and waits for it, at
 * most `timeout_ms` (0 = 5000).  Returns 0 when done, 1 on time-out. */
int tally_flush(tally_t *h, uint32_t timeout_ms);

/* The rule, once flushed:  offered == written + dropped.  (Over a prefork
 * run, run_end.stats.lost adds what children offered and never settled:
 * a child that ended with _exit() holding a queue.)
 * These count the caller's events; run_start and run_end are tally's own
 * lines and count in neither (run_end.stats.events = written + 2, summed
 * over the run's processes).  A sink that loses a line -- any line,
 * run_start included -- counts it in sink_failures (and in its own
 * tally_get_sinks() entry): written events may still be lost by one sink
 * and kept by another. */
typedef struct tally_counters {
    uint64_t offered;        /* events handed to tally */
    uint64_t written;        /* events the writer encoded and gave to sinks */
    uint64_t dropped;        /* events dropped: queue full, too large */
    uint64_t sink_failures;  /* lines the sinks failed to store, summed */
    uint64_t requests;       /* request events recorded */
    uint64_t errors;         /* error events (tally_error, tally_error_at) */
    uint64_t tokens_out;     /* completion tokens of requests */
    uint64_t unpriced;       /* requests with no cost and no price for their model */
} tally_counters;

/* This process's counters (the rule is above the struct). */
void tally_get_counters(const tally_t *h, tally_counters *out);

/* Each sink's own losses: events it could not keep (its buffer was full
 * while its database was locked, a write failed, it could not be opened).
 * One sink's losses never cost another sink an event.  Fills up to `n`
 * entries and returns the number of sinks.  Names: "jsonl", "sqlite",
 * "memory", "subscriber". */
typedef struct tally_sink_stats {
    const char *name;
    uint64_t lost;
} tally_sink_stats;
size_t tally_get_sinks(const tally_t *h, tally_sink_stats *out, size_t n);

/* Memory sink (tally_config.memory_sink): the number of events kept, and a
 * walk over them under the sink's lock.  fn returns non-zero to stop. */
size_t tally_memory_count(tally_t *h);
void tally_memory_foreach(tally_t *h,
                          int (*fn)(void *ud, const char *line, size_t len),
                          void *ud);

/* Writes everything queued, then run_end, and frees the handle.
 * `reason`: "completed" (NULL), "interrupted", "aborted" or "errored".
 * In the process that opened the handle, run_end.stats sums this process
 * and every forked child that recorded on it (call it after the children
 * have exited).  In a forked child it only writes what is queued: the
 * children of a prefork server never write run_end. */
void tally_close(tally_t *h, const char *reason);
/* The same, with exit_code in run_end. */
void tally_close_with_code(tally_t *h, const char *reason, int exit_code);

/* The port /metrics is served on (0: not serving). */
int tally_metrics_port(const tally_t *h);

/* "0.1.0" */
const char *tally_version(void);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif
#endif
