/*
 * row -- one event as a flat record: what the database stores in columns,
 * what the rollup and `tally stats` count, what every reader produces.
 *
 * There is one interpretation of each source: row_from_json() reads a
 * line of any kind tally accepts (its own events, toy/v1 from other
 * producers, the TelemetryLogger callbacks' tagged lines); the SQLite sink fills rows from its
 * ring records; the database reader fills them from columns.  Everything
 * downstream -- inserts, the rollup, stats, runs -- reads rows, so a figure
 * cannot depend on where its events came from.
 *
 * Strings are (pointer, length) views into whatever the row was made from;
 * a NULL pointer is an absent field.
 */
#ifndef TALLY_ROW_H
#define TALLY_ROW_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"
#include "event_id.h"
#include "fields.h"
#include "json.h"

typedef struct sv {
    const char *p;     /* NULL = absent */
    size_t n;
} sv;

#define SV_LIT(lit) ((sv){"" lit, sizeof(lit) - 1})

static inline int sv_eq(sv a, const char *lit, size_t n)
{
    return a.p && a.n == n && memcmp(a.p, lit, n) == 0;
}
#define SV_IS(a, lit) sv_eq((a), "" lit, sizeof(lit) - 1)

/* Which numbers a row has (`has`). */
enum {
    ROW_TS = 1u << 0,
    ROW_OK = 1u << 1,
    ROW_PROMPT = 1u << 2,
    ROW_CACHED = 1u << 3,
    ROW_CACHE_WRITE = 1u << 4,
    ROW_COMPLETION = 1u << 5,
    ROW_REASONING = 1u << 6,
    ROW_LATENCY = 1u << 7,
    ROW_TTFT = 1u << 8,
    ROW_COST = 1u << 9,        /* cost_nusd: tally's integer nano-USD */
    ROW_ENERGY = 1u << 10,
    ROW_GPU = 1u << 11,
    ROW_STEP = 1u << 12,
    ROW_LOSS = 1u << 13,
    ROW_WALL = 1u << 14,       /* wall_us of a finished step or epoch */
    ROW_STEP_TOKENS = 1u << 15,
    /* Only from OpenJarvis databases, which store these themselves. */
    ROW_COST_USD = 1u << 16,
    ROW_TOTAL = 1u << 17,
    ROW_TPUT = 1u << 18,
    ROW_LOSS_NONFINITE = 1u << 19,  /* a step's loss was NaN or infinite (written null) */
    ROW_LR = 1u << 20,         /* a step's learning rate */
};

typedef struct row {
    sv id, run_id, kind, phase, name;
#define X(SLOT, name, flags) sv name;
    TALLY_REQUEST_LABELS(X)         /* a request's named fields (fields.h) */
#undef X
    sv error, degraded, text;
    sv json;                   /* the whole line, when the row came from one */
    sv reason, run_model;      /* run_end.reason, run_start.model.name */
    unsigned has;
    int ok;
    double ts;                 /* Unix seconds */
    int64_t prompt, cached, cache_write, completion, reasoning, total_tokens;
    double latency_us, ttft_us, energy_j, gpu_util, throughput, cost_usd;
    int64_t cost_nusd, step, step_tokens;
    double loss, wall_us, lr;
} row;

/* Times tally can place: from 1970 to 2255 (seq in the database is the
 * time in microseconds times 1024, and must fit 63 bits).  A `ts` outside
 * counts as no time. */
#define ROW_TS_MAX 8.9e9

void row_clear(row *r);

/* Pointers to the row's strings (id, run, kind, phase, name, the named
 * fields, error, degraded, text, json, reason, run model): what a copy of
 * a row must carry.  Returns how many (at most ROW_MAX_STRINGS). */
#define ROW_MAX_STRINGS 32
size_t row_strings(row *r, sv *out[ROW_MAX_STRINGS]);

/* Rows copied with their strings, to outlive what they were read from:
 * add while filling (strings kept as offsets, the buffer may move), fix
 * once filled (offsets become pointers), then read rows[0..n). */
typedef struct row_batch {
    row *rows;
    size_t n, cap;
    buf bytes;                /* every string of the rows (capped: buf_init) */
} row_batch;

int row_batch_add(row_batch *b, const row *r);   /* 0, or -1: no memory / over the cap */
void row_batch_fix(row_batch *b);
void row_batch_clear(row_batch *b);              /* empty, memory kept */
void row_batch_free(row_batch *b);

/* A request: kind "eval" with name "request". */
static inline int row_is_request(const row *r)
{
    return SV_IS(r->kind, "eval") && SV_IS(r->name, "request");
}

/* What a reader of one file remembers between lines: the runs (from
 * run_start, else named by the file), when each started (for toy/v1 lines
 * that have only `t`), and a TelemetryLogger file's open step_begin.  An
 * event goes to the run whose run_start's id begins like its own
 * (event_id.h); an event without such an id to the latest run_start. */
#define ROW_CTX_RUNS 64

/* A run seen in this file: its id tag (event_id.h), name and start. */
typedef struct row_run {
    char tag[TALLY_ID_RUN + 1];
    char run_id[256];
    char model[128], phase[32]; /* run_start's model.name and phase */
    double started;
    int have_started;
} row_run;

typedef struct row_ctx {
    char run_id[256];          /* the latest run: for lines whose id names none */
    char model[128], phase[32];
    double started;
    int have_started;
    int64_t begin_step;
    double begin_ts;
    int have_begin;
    /* Runs by id tag, so that lines of several runs appending to one file
     * are each credited to their own run_start. */
    row_run runs[ROW_CTX_RUNS];
    int nruns, evict;
} row_ctx;

/* A training event (step, epoch, an eval that is not a request, an error
 * of a training run) without a model of its own is the run's model's: the
 * writer stores it so, and readers of lines fill it the same way. */
void row_take_run_model(row *r, const char *run_model, const char *run_phase);

/* `run_id` names the file's run until a run_start says otherwise. */
void row_ctx_init(row_ctx *c, const char *run_id);

/* Fills r from one parsed line (an object).  Returns 1 for an event, 0
 * when the line is neither a toy/v1 event (`kind`) nor a TelemetryLogger one
 * (`tag`).  Strings point into v and into c. */
int row_from_json(const jv *v, row_ctx *c, row *r);

/* The same from a line's text, building only the members rows use (the
 * rest is checked as strictly as json_parse does, but not kept): what
 * readers of many lines use.  The line is changed (strings terminated in
 * place), unless `copy` (the strings rows use copied into a).  *root is
 * the parsed document (NULL when it is not JSON: err says why).  Returns
 * 1 for an event, 0 otherwise. */
int row_from_line(json_arena *a, char *line, size_t len, int copy, row_ctx *c, row *r, const jv **root,
                  json_error *err);

#endif
