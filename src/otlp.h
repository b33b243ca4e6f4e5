/*
 * otlp -- OTLP's JSON encoding of tally's events (as spans) and of the
 * metrics table (docs/otlp.md).
 */
#ifndef TALLY_OTLP_H
#define TALLY_OTLP_H

#include <stdint.h>

#include "buf.h"

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

#endif
