/*
 * otlp -- OTLP's JSON encoding of tally's events (as spans) and of the
 * metrics table (docs/otlp.md).
 */
#ifndef TALLY_OTLP_H
#define TALLY_OTLP_H

#include <stdatomic.h>
#include <stdint.h>

#include "buf.h"
#include "tally.h"

struct row;
struct metrics;

/* The resource every batch describes. */
typedef struct otlp_res {
    const char *service_name;   /* OTEL_SERVICE_NAME, else "tally" */
    const char *instance_id;    /* the run id and process */
    const char *host, *run_id, *version;
} otlp_res;

void otlp_resource(buf *b, const otlp_res *res);

/* A traces body: begin, spans, end. */
void otlp_traces_begin(buf *b, const otlp_res *res);
void otlp_traces_end(buf *b);

/* One event as a span (requests, steps, epochs, evals, errors; other kinds
 * are not spans: returns 0 and writes nothing).  `payload` is the ring
 * record (for stages, lr, grad norm) when there is one, with its REC_*
 * type; `end_us` the event's Unix time in microseconds. */
int otlp_span(buf *b, int first_span, const char *id, int64_t end_us, const void *payload, int type,
              const struct row *r);

/* A metrics body: every series of the table, cumulative since start_ns. */
void otlp_metrics(buf *b, const struct metrics *m, const otlp_res *res, int64_t start_ns, int64_t now_ns);

/* The exporter (sink_otlp.c): batches, a sender thread, retries and the
 * spool.  Used by the library's OTLP sink and by `tally exporter`. */
typedef struct otlp_conf {
    const char *endpoint;         /* base URL */
    const char *spool;            /* directory, NULL = memory only */
    uint64_t spool_max_bytes;     /* 0 = 256 MiB */
    uint32_t backoff_ms;          /* 0 = 1000 */
    uint32_t metrics_interval_ms; /* 0 = 60000 */
    struct metrics *metrics;      /* exported to /v1/metrics, or NULL */
    const char *host, *run_id;    /* the resource */
    tally_log_fn log;
    void *log_ud;
    _Atomic uint64_t *lost;       /* where losses are counted (NULL: its own) */
} otlp_conf;

typedef struct otlp_exporter otlp_exporter;
otlp_exporter *otlp_exporter_open(const otlp_conf *c);
/* One event as a span (see otlp_span); -1 when it could not be kept. */
int otlp_exporter_add(otlp_exporter *e, const char *id, int64_t ts_us, const void *payload, int type,
                      const struct row *r);
/* Hands the open batch to the sender. */
void otlp_exporter_seal(otlp_exporter *e);
uint64_t otlp_exporter_lost(const otlp_exporter *e);
uint64_t otlp_exporter_sent(const otlp_exporter *e);
void otlp_exporter_after_fork(otlp_exporter *e);
/* Delivers what it can within 2 s, spools the rest, stops. */
void otlp_exporter_close(otlp_exporter *e);

/* OTEL_EXPORTER_OTLP_HEADERS into "Name: value" lines (a curl_slist). */
struct curl_slist;
struct curl_slist *otlp_parse_headers(const char *env);

#endif
