/*
 * source -- events for queries, from whatever files users already have.
 *
 * Detected by content, not by name: a file that starts with SQLite's
 * header is a database (tally's by application_id, OpenJarvis's by its
 * `telemetry` table; read-only, never modified); anything else is JSON
 * Lines (tally, toy/v1 from other producers, seed-002 tagged lines); a
 * directory is searched for *.jsonl; "-" is standard input.
 *
 * Every event becomes one `sev`, the flat record the commands aggregate.
 */
#ifndef TALLY_CLI_SOURCE_H
#define TALLY_CLI_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"

typedef struct sstr {
    const char *p;      /* NUL-terminated, or NULL */
} sstr;

enum {
    SEV_TS = 1 << 0, SEV_LATENCY = 1 << 1, SEV_TTFT = 1 << 2, SEV_COST = 1 << 3, SEV_ENERGY = 1 << 4,
    SEV_GPU = 1 << 5, SEV_TPUT = 1 << 6, SEV_STEP = 1 << 7, SEV_LOSS = 1 << 8, SEV_WALL = 1 << 9,
    SEV_TOKENS = 1 << 10, SEV_OK = 1 << 11, SEV_UNPRICED = 1 << 12,
};

typedef struct sev {
    const char *kind, *phase, *name, *run_id;
    const char *model, *engine, *route, *principal, *error, *degraded;
    int is_request;
    unsigned has;
    int ok;
    double ts;
    int64_t prompt, cached, cache_write, completion, reasoning, total_tokens;
    double latency_us, ttft_us, cost_usd, energy_j, gpu_util, throughput;
    int64_t step, step_tokens;
    double loss, wall_us;
    const char *reason;       /* run_end.reason */
    const char *run_model;    /* run_start.model.name */
    const jv *json;           /* the parsed event (JSONL sources), or NULL */
} sev;

typedef int (*sev_fn)(void *ud, const sev *e);   /* non-zero stops */

typedef struct source_opts {
    double since, until;      /* 0 = open */
    int strict;               /* stop at the first bad line */
} source_opts;

typedef struct source_stats {
    uint64_t lines, events, bad, torn;
    int reported;
} source_stats;

/* Reads every source in `paths` (FILE, DIR, DB or "-").  Returns 0, or -1
 * with a one-line reason in err. */
int source_read_all(char **paths, int n, const source_opts *o, sev_fn fn, void *ud, source_stats *st,
                    char *err, size_t errlen);

/* What kind of source a path is: 0 JSONL, 1 tally DB, 2 OpenJarvis DB, -1 error. */
int source_kind(const char *path, char *err, size_t errlen);

#endif
