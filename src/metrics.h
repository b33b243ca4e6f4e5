/*
 * metrics -- counters, gauges and histograms over the events, for the
 * Prometheus endpoint and the OTLP exporter (docs/metrics.md).
 *
 * The series live in one table in shared memory (MAP_SHARED, made when the
 * handle opens): forked workers add to the same table, so the endpoint of
 * any process shows the sum over every process of the run -- no
 * multiprocess directory.  Updates happen on the writer thread (from each
 * event's row), never on the recording call: finding a series is a probe
 * of an open-addressing table and claiming a free slot one compare-and-
 * swap; values are atomic adds.  No lock is shared between processes, so a
 * worker killed mid-update cannot wedge the others.
 *
 * Cardinality is bounded: each family has a cap on its series (default
 * 500); past it, events go to one series whose label values are all
 * "_other", and tally_metrics_series_overflow_total{family} counts them.
 */
#ifndef TALLY_METRICS_H
#define TALLY_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buf.h"

struct row;

enum { MX_COUNTER = 1, MX_GAUGE, MX_HISTOGRAM };

/* The families, in the order they are shown.  X(ID, name, type, help, buckets, labels) */
typedef enum mx_family_id {
    MXF_DURATION, MXF_TOKEN_USAGE, MXF_TTFT, MXF_TPOT,
    MXF_REQUESTS, MXF_DEGRADED, MXF_COST, MXF_TOKENS, MXF_REQ_ENERGY, MXF_ENERGY,
    MXF_STEPS, MXF_STEP_DURATION, MXF_LOSS, MXF_NONFINITE, MXF_EPOCHS, MXF_TRAIN_TOKENS, MXF_ERRORS,
    MXF_OFFERED, MXF_WRITTEN, MXF_DROPPED, MXF_SINK_LOST, MXF_OVERFLOW,
    MXF_COUNT
} mx_family_id;

#define MX_MAX_BUCKETS 20
#define MX_MAX_LABELS 5

typedef struct mx_family {
    const char *name;         /* Prometheus name */
    const char *otel_name;    /* OTLP name (dots), unit below */
    const char *unit;
    int type;
    const char *help;
    const double *bounds;     /* histogram upper bounds, ascending */
    int n_bounds;
    const char *labels[MX_MAX_LABELS]; /* Prometheus label names (NULL-terminated) */
    const char *otel_labels[MX_MAX_LABELS];
} mx_family;

extern const mx_family tally_mx_families[MXF_COUNT];

typedef struct metrics metrics;

/* A table for up to `max_series` series in all (0 = 4096) and at most
 * `cap` per family (0 = 500), in shared memory.  NULL when out of memory. */
metrics *metrics_new(uint32_t max_series, uint32_t cap);
void metrics_free(metrics *m);

/* Adds one event (a row built by the writer, or read from a file). */
void metrics_observe(metrics *m, const struct row *r);

/* Low level: add to a counter / set a gauge / observe into a histogram,
 * with label values in the family's order (NULL or "" = absent). */
void metrics_add(metrics *m, mx_family_id f, const char *const *values, double v);
void metrics_set(metrics *m, mx_family_id f, const char *const *values, double v);
void metrics_hist(metrics *m, mx_family_id f, const char *const *values, double v);

/* Prometheus text format 0.0.4 into b. */
void metrics_render(const metrics *m, buf *b);

/* Every series: its family, its labels as rendered for Prometheus
 * (name="value",...), and its values: counters and gauges in v[0];
 * histograms as per-bucket counts v[0..n_bounds] (the last is +Inf),
 * then the sum as a double in sum. */
typedef struct mx_series {
    mx_family_id family;
    const char *labels;
    uint32_t labels_len;
    const char *values[MX_MAX_LABELS];   /* each label's value, unescaped (NUL-terminated copies) */
    uint64_t counts[MX_MAX_BUCKETS + 1];
    uint64_t count;
    double sum;
    double value;
} mx_series;
void metrics_foreach(const metrics *m, void (*fn)(void *ud, const mx_series *s), void *ud);

/* The HTTP server of /metrics (sink_metrics.c), on its own thread:
 * "HOST:PORT" (":PORT" = 127.0.0.1), port 0 = any free one.  `before`
 * runs before each scrape.  NULL (and err) when it cannot listen. */
typedef struct metrics_http metrics_http;
metrics_http *metrics_http_start(metrics *m, const char *listen, void (*before)(void *ud), void *ud, char *err,
                                 size_t errlen);
int metrics_http_port(const metrics_http *mh);
/* "HOST:PORT", ":PORT" or "PORT" (host 127.0.0.1), "[V6]:PORT" into an
 * address; -1 (err) when it is not one. */
int metrics_listen_parse(const char *spec, struct sockaddr_storage *out, socklen_t *out_len, char *err, size_t errlen);
void metrics_http_stop(metrics_http *mh);
void metrics_http_forget(metrics_http *mh);

/* Series in use, and events that went to an _other series. */
uint32_t metrics_series(const metrics *m);
uint64_t metrics_overflowed(const metrics *m);

#endif
