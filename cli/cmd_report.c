/*
 * tally report -- one self-contained HTML file with the stats tables and
 * charts of serving and training, for people.
 *
 * One pass over the sources, as `stats` reads them, fills bounded
 * aggregates and nothing per event:
 *   - the stats groups (by the --by keys, default model, and by engine),
 *   - a time series of at most SERIES_MAX buckets (a bucket is an agg_cell:
 *     counts, sums and mergeable sketches; when the data outgrows the
 *     window, the bucket width doubles and neighbours merge), and one of
 *     days for tokens and cost per model,
 *   - per run: a line for the runs list and, for training, its steps
 *     decimated to at most POINTS_MAX (the stride doubles when full), its
 *     evaluations and errors.
 * So the file's size does not grow with the number of events.  The data
 * goes into the page as JSON; the page's own script (cli/report.js, built
 * into the command) draws the tables and SVG charts.  docs/report.md.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "encode.h"
#include "report_assets.h"
#include "source.h"
#include "par.h"
#include "stats.h"
#include "util.h"

#define SERIES_MAX 240       /* buckets of the time series */
#define MODELS_MAX 8         /* named in per-model charts; the rest are "other" */
#define RUNS_MAX 2000        /* in the runs list */
#define TRAIN_RUNS_MAX 64    /* with charts */
#define POINTS_MAX 1000      /* steps kept per run (decimated) */
#define MARKS_MAX 500        /* evals, errors kept per run */
#define CDF_POINTS 50
#define MAX_OUT ((size_t)64 << 20)

typedef struct bucket {
    agg_cell c;
    double tok_in[MODELS_MAX + 1], tok_out[MODELS_MAX + 1], cost[MODELS_MAX + 1];
    uint64_t req[MODELS_MAX + 1];
} bucket;

/* Buckets of `width` seconds (a power of two times `unit`), ids lo..hi. */
typedef struct series {
    double unit, width;
    int64_t lo, hi;
    int any;
    bucket *b;
} series;

typedef struct point {
    double step, loss, wall_ms, tok_s, lr, ts;
} point;

typedef struct mark {
    double step, value, ts;
    char *label;
} mark;

typedef struct trun {
    point *pts;
    size_t npts;
    int by_minute;           /* from a database's rollup: x is the minute, not the step */
    uint64_t seen, stride;
    mark evals[MARKS_MAX], errors[MARKS_MAX];
    size_t nevals, nerrors;
    double last_step;
} trun;

typedef struct run {
    char *id, *model, *phase, *reason;
    double first, last;
    uint64_t requests, failed, steps, evals, errors;
    trun *train;
} run;

typedef struct report {
    agg tables[2];
    int ntables;
    series fine, daily;
    char *models[MODELS_MAX];
    int nmodels;
    run runs[RUNS_MAX];
    size_t nruns, runs_over, ntrain;
    run *last_run;
    where w[MAX_WHERE];
    int nw;
    agg_cell all;            /* every request (the first table's groups merged): the distributions */
    int nomem;
} report;

/* ---- the time series -------------------------------------------------------------- */

static int series_init(series *s, double unit)
{
    memset(s, 0, sizeof *s);
    s->unit = s->width = unit;
    s->b = calloc(SERIES_MAX, sizeof *s->b);
    if (!s->b) return -1;
    for (int i = 0; i < SERIES_MAX; i++) agg_cell_init(&s->b[i].c);
    return 0;
}

static void series_free(series *s)
{
    if (!s->b) return;
    for (int i = 0; i < SERIES_MAX; i++) agg_cell_free(&s->b[i].c);
    free(s->b);
}

static int bucket_merge(bucket *into, bucket *from)
{
    int rc = agg_cell_merge(&into->c, &from->c);
    for (int m = 0; m <= MODELS_MAX; m++) {
        into->tok_in[m] += from->tok_in[m];
        into->tok_out[m] += from->tok_out[m];
        into->cost[m] += from->cost[m];
        into->req[m] += from->req[m];
    }
    agg_cell_reset(&from->c);
    agg_cell c = from->c;
    memset(from, 0, sizeof *from);
    from->c = c;
    return rc;
}

/* Doubles the width: bucket k of the old width is in k/2 of the new. */
static int series_coarsen(series *s)
{
    int rc = 0;
    int64_t nlo = s->lo >> 1;
    for (int64_t k = s->lo; k <= s->hi; k++) {
        int64_t i = k - s->lo, j = (k >> 1) - nlo;
        if (i != j) rc |= bucket_merge(&s->b[j], &s->b[i]);
    }
    s->lo = nlo;
    s->hi >>= 1;
    s->width *= 2;
    return rc;
}

/* The bucket for time ts (NULL when memory ran out). */
static bucket *series_at(series *s, double ts, int *nomem)
{
    int64_t id = (int64_t)floor(ts / s->width);
    if (!s->any) {
        s->lo = s->hi = id;
        s->any = 1;
    }
    while ((id < s->lo ? s->hi - id : id - s->lo) >= SERIES_MAX) {
        if (series_coarsen(s)) *nomem = 1;
        id = (int64_t)floor(ts / s->width);
    }
    if (id < s->lo) {
        /* Move the buckets up; the freed ones at the bottom are empty
         * (their cells' memory went with the move). */
        size_t d = (size_t)(s->lo - id), used = (size_t)(s->hi - s->lo + 1);
        for (size_t i = used; i < used + d; i++) agg_cell_free(&s->b[i].c); /* empty, overwritten */
        memmove(s->b + d, s->b, used * sizeof *s->b);
        memset(s->b, 0, d * sizeof *s->b);
        for (size_t i = 0; i < d; i++) agg_cell_init(&s->b[i].c);
        s->lo = id;
    }
    if (id > s->hi) s->hi = id;
    return &s->b[id - s->lo];
}

/* ---- rows ---------------------------------------------------------------------------- */

static char *dup_sv(sv v) { return v.p ? strndup(v.p, v.n) : strdup("-"); }

static int model_index(report *r, sv m)
{
    if (!m.p) m = SV_LIT("-");
    for (int i = 0; i < r->nmodels; i++)
        if (strlen(r->models[i]) == m.n && !memcmp(r->models[i], m.p, m.n)) return i;
    if (r->nmodels == MODELS_MAX) return MODELS_MAX;
    char *c = strndup(m.p, m.n);
    if (!c) {
        r->nomem = 1;
        return MODELS_MAX;
    }
    r->models[r->nmodels] = c;
    return r->nmodels++;
}

static run *run_of(report *r, sv id)
{
    if (!id.p) id = SV_LIT("-");
    run *x = r->last_run;
    if (x && strlen(x->id) == id.n && !memcmp(x->id, id.p, id.n)) return x;
    for (size_t i = 0; i < r->nruns; i++) {
        x = &r->runs[i];
        if (strlen(x->id) == id.n && !memcmp(x->id, id.p, id.n)) return r->last_run = x;
    }
    if (r->nruns == RUNS_MAX) {
        r->runs_over++;
        return NULL;
    }
    x = &r->runs[r->nruns];
    memset(x, 0, sizeof *x);
    x->id = strndup(id.p, id.n);
    if (!x->id) {
        r->nomem = 1;
        return NULL;
    }
    x->first = INFINITY;
    x->last = -INFINITY;
    r->nruns++;
    return r->last_run = x;
}

static trun *train_of(report *r, run *x)
{
    if (x->train || r->ntrain == TRAIN_RUNS_MAX) return x->train;
    x->train = calloc(1, sizeof *x->train);
    if (x->train) x->train->pts = calloc(2 * POINTS_MAX, sizeof(point));
    if (!x->train || !x->train->pts) {
        if (x->train) free(x->train);
        x->train = NULL;
        r->nomem = 1;
        return NULL;
    }
    x->train->stride = 1;
    r->ntrain++;
    return x->train;
}

static void add_mark(mark *m, size_t *n, double step, double value, double ts, sv label)
{
    if (*n == MARKS_MAX) return;
    m[*n] = (mark){step, value, ts, label.p ? strndup(label.p, label.n) : NULL};
    (*n)++;
}

static void add_point(trun *t, point p)
{
    t->last_step = p.step;
    if (t->seen++ % t->stride) return;
    t->pts[t->npts++] = p;
    if (t->npts == 2 * POINTS_MAX) {
        /* Full: keep every other point, and from now on every 2·stride-th. */
        for (size_t i = 0; i < POINTS_MAX; i++) t->pts[i] = t->pts[2 * i];
        t->npts = POINTS_MAX;
        t->stride *= 2;
    }
}

static void add_step(trun *t, const row *e)
{
    point p = {(e->has & ROW_STEP) ? (double)e->step : (double)t->seen, (e->has & ROW_LOSS) ? e->loss : NAN,
               (e->has & ROW_WALL) ? e->wall_us / 1e3 : NAN,
               (e->has & ROW_WALL) && (e->has & ROW_STEP_TOKENS) && e->wall_us > 0
                   ? (double)e->step_tokens / (e->wall_us / 1e6)
                   : NAN,
               (e->has & ROW_LR) ? e->lr : NAN, (e->has & ROW_TS) ? e->ts : NAN};
    add_point(t, p);
}

/* The report's parts that merge exactly (the stats tables, the fine time
 * series): on every thread, each with its own (report_fork). */
static int agg_row(void *ud, const row *e)
{
    report *r = ud;
    if (!where_pass(r->w, r->nw, e)) return 0;
    for (int i = 0; i < r->ntables; i++)
        if (on_row(&r->tables[i], e)) return -1;
    int kind = agg_kind(e);
    int serve_error = kind == AGG_ERROR && SV_IS(e->phase, "serve");
    if ((kind == AGG_REQUEST || serve_error) && (e->has & ROW_TS)) {
        bucket *b = series_at(&r->fine, e->ts, &r->nomem);
        r->nomem |= agg_cell_add(&b->c, e) != 0;
    }
    return r->nomem ? -1 : 0;
}

/* The parts that depend on the order of events (the runs and their
 * curves, the first models seen): in file order, on the reading thread. */
static int order_row(void *ud, const row *e)
{
    report *r = ud;
    if (!where_pass(r->w, r->nw, e)) return 0;
    run *x = run_of(r, e->run_id);
    if (x && (e->has & ROW_TS)) {
        if (e->ts < x->first) x->first = e->ts;
        if (e->ts > x->last) x->last = e->ts;
    }
    int kind = agg_kind(e);
    if (x && SV_IS(e->kind, "run_start")) {
        free(x->model);
        free(x->phase);
        x->model = dup_sv(e->run_model);
        x->phase = dup_sv(e->phase);
    } else if (x && SV_IS(e->kind, "run_end")) {
        free(x->reason);
        x->reason = dup_sv(e->reason);
    }
    if (kind == AGG_REQUEST) {
        if (x) {
            x->requests++;
            if ((e->has & ROW_OK) && !e->ok) x->failed++;
        }
        if (e->has & ROW_TS) {
            int m = model_index(r, e->model);
            bucket *d = series_at(&r->daily, e->ts, &r->nomem);
            d->tok_in[m] += (double)e->prompt;
            d->tok_out[m] += (double)e->completion;
            d->req[m]++;
            if (e->has & ROW_COST) d->cost[m] += (double)e->cost_nusd / 1e9;
            else if (e->has & ROW_COST_USD) d->cost[m] += e->cost_usd;
        }
        return r->nomem ? -1 : 0;
    }
    if (!x) return 0;
    if (kind == AGG_STEP) {
        x->steps++;
        trun *t = train_of(r, x);
        if (t) add_step(t, e);
    } else if (kind == AGG_EVAL) {
        x->evals++;
        trun *t = train_of(r, x);
        if (t) add_mark(t->evals, &t->nevals, (e->has & ROW_STEP) ? (double)e->step : t->last_step, e->loss,
                        (e->has & ROW_TS) ? e->ts : NAN, e->name);
    } else if (kind == AGG_ERROR && !SV_IS(e->phase, "serve")) {
        x->errors++;
        trun *t = train_of(r, x);
        if (t) add_mark(t->errors, &t->nerrors, (e->has & ROW_STEP) ? (double)e->step : t->last_step, NAN,
                        (e->has & ROW_TS) ? e->ts : NAN, e->name);
    }
    return r->nomem ? -1 : 0;
}

static int on_report_row(void *ud, const row *e)
{
    return agg_row(ud, e) || order_row(ud, e) ? -1 : 0;
}

/* ---- with every core: the parts that merge, per thread (cli/par.h) -------------------- */

static void *report_fork(void *ud)
{
    const report *r = ud;
    report *t = calloc(1, sizeof *t);
    if (!t || series_init(&t->fine, r->fine.unit)) {
        free(t);
        return NULL;
    }
    t->ntables = r->ntables;
    for (int i = 0; i < r->ntables; i++) agg_like(&t->tables[i], &r->tables[i]);
    memcpy(t->w, r->w, sizeof t->w);
    t->nw = r->nw;
    return t;
}

static void report_free(report *r);

/* Adds `from`'s buckets into `into` (from is left empty): both at the
 * wider width, then wider still until both ranges fit in one series --
 * the width one reader of every event would have ended with. */
static int series_merge(series *into, series *from)
{
    if (!from->any) return 0;
    int rc = 0;
    for (;;) {
        while (into->width < from->width) rc |= series_coarsen(into);
        while (from->width < into->width) rc |= series_coarsen(from);
        double w = into->width;
        /* both ends of from's range, placed in into (which may widen it) */
        series_at(into, ((double)from->lo + 0.5) * w, &rc);
        series_at(into, ((double)from->hi + 0.5) * w, &rc);
        if (into->width == w) break;
    }
    for (int64_t k = from->lo; k <= from->hi; k++) rc |= bucket_merge(&into->b[k - into->lo], &from->b[k - from->lo]);
    return rc;
}

static int report_join(void *ud, void *part)
{
    report *r = ud, *t = part;
    if (!t) return 0;
    int rc = 0;
    for (int i = 0; i < r->ntables; i++) rc |= agg_merge(&r->tables[i], &t->tables[i]);
    r->nomem |= t->nomem | series_merge(&r->fine, &t->fine);
    report_free(t);
    free(t);
    return rc | r->nomem;
}

/* A database's rollup cell (a minute of one key): the same aggregates as
 * rows give, except that a training run is drawn per minute (loss at the
 * minute's last step, its median step time) and runs are known by their
 * cells (no run_end reason). */
static int on_report_cell(void *ud, const rollup_key *k, const agg_cell *c)
{
    report *r = ud;
    row e;
    rollup_key_row(k, &e);
    if (!where_pass(r->w, r->nw, &e)) return 0;
    for (int i = 0; i < r->ntables; i++)
        if (on_cell(&r->tables[i], k, c)) return -1;
    run *x = run_of(r, e.run_id);
    if (x && (e.has & ROW_TS)) {
        if (e.ts < x->first) x->first = e.ts;
        if (e.ts + 60 > x->last) x->last = e.ts + 60;
    }
    if (x && SV_IS(e.kind, "run_start") && !x->phase) x->phase = dup_sv(e.phase);
    if (x && !x->model && e.model.p && k->agg != AGG_REQUEST) x->model = dup_sv(e.model);
    if (k->agg == AGG_REQUEST) {
        if (x) {
            x->requests += c->requests;
            x->failed += c->failed;
        }
        if (e.has & ROW_TS) {
            int m = model_index(r, e.model);
            bucket *b = series_at(&r->fine, e.ts, &r->nomem);
            r->nomem |= agg_cell_merge_lean(&b->c, c) != 0;
            bucket *d = series_at(&r->daily, e.ts, &r->nomem);
            d->tok_in[m] += (double)c->prompt;
            d->tok_out[m] += (double)c->completion;
            d->req[m] += c->requests;
            d->cost[m] += agg_cost_usd(c);
        }
        return r->nomem ? -1 : 0;
    }
    if (!x) return 0;
    trun *t = NULL;
    if (c->steps || c->evals || (c->error_events && k->agg == AGG_ERROR)) t = train_of(r, x);
    if (t) t->by_minute = 1;
    double ts = (e.has & ROW_TS) ? e.ts : NAN;
    if (k->agg == AGG_STEP) {
        x->steps += c->steps;
        if (t) {
            point p = {ts, c->has_loss ? c->loss.last : NAN,
                       c->step_time.n ? sketch_quantile(&c->step_time, 0.5) / 1e3 : NAN,
                       c->step_tokens_n && c->step_wall_us > 0 ? (double)c->step_tokens / (c->step_wall_us / 1e6)
                                                               : NAN,
                       NAN, ts};
            add_point(t, p);
        }
    } else if (k->agg == AGG_EVAL) {
        x->evals += c->evals;
        if (t) add_mark(t->evals, &t->nevals, ts, c->eval.last, ts, e.name.p ? e.name : SV_LIT("eval"));
    } else if (k->agg == AGG_ERROR && !SV_IS(e.phase, "serve")) {
        x->errors += c->error_events;
        if (t) add_mark(t->errors, &t->nerrors, ts, NAN, ts, SV_LIT("errors in this minute"));
    } else if (k->agg == AGG_ERROR && (e.has & ROW_TS)) {
        bucket *b = series_at(&r->fine, e.ts, &r->nomem);
        r->nomem |= agg_cell_merge_lean(&b->c, c) != 0;
    }
    return r->nomem ? -1 : 0;
}

/* ---- the page's data ------------------------------------------------------------------ */

static void put_num(buf *b, double v) { enc_double(b, v); }

static void put_key(buf *b, const char *k)
{
    enc_cstr(b, k);
    buf_putc(b, ':');
}

static void put_q(buf *b, const sketch *s, double q)
{
    put_num(b, s->n ? sketch_quantile(s, q) / 1e3 : NAN);
}

static void series_json(buf *b, const series *s, int nmodels, int daily)
{
    buf_puts(b, "{\"width_s\":");
    put_num(b, s->width);
    buf_puts(b, ",\"buckets\":[");
    if (s->any)
        for (int64_t k = s->lo; k <= s->hi; k++) {
            const bucket *x = &s->b[k - s->lo];
            const agg_cell *c = &x->c;
            buf_puts(b, k == s->lo ? "{" : ",{");
            put_key(b, "t");
            put_num(b, (double)k * s->width);
            if (daily) {
                const char *names[] = {"tokens_in", "tokens_out", "cost_usd", "requests"};
                for (int f = 0; f < 4; f++) {
                    buf_putc(b, ',');
                    put_key(b, names[f]);
                    buf_putc(b, '[');
                    for (int m = 0; m <= nmodels && m <= MODELS_MAX; m++) {
                        if (m) buf_putc(b, ',');
                        put_num(b, f == 0 ? x->tok_in[m] : f == 1 ? x->tok_out[m] : f == 2 ? x->cost[m] : (double)x->req[m]);
                    }
                    buf_putc(b, ']');
                }
            } else {
                enc_member_i64(b, "requests", (int64_t)c->requests);
                enc_member_i64(b, "failed", (int64_t)c->failed);
                enc_member_i64(b, "errors", (int64_t)c->error_events);
                buf_puts(b, ",\"p50_ms\":");
                put_q(b, &c->latency, 0.50);
                buf_puts(b, ",\"p90_ms\":");
                put_q(b, &c->latency, 0.90);
                buf_puts(b, ",\"p99_ms\":");
                put_q(b, &c->latency, 0.99);
                enc_member_double(b, "j_per_tok",
                                  c->energy_n && c->energy_completion > 0 ? c->energy_j / c->energy_completion : NAN);
                buf_puts(b, ",\"degraded\":{");
                for (int i = 0; i < AGG_MAX_DEGRADED && c->degraded[i]; i++) {
                    if (i) buf_putc(b, ',');
                    put_key(b, c->degraded[i]);
                    enc_i64(b, (int64_t)c->degraded_n[i]);
                }
                if (c->degraded_other) {
                    buf_puts(b, c->degraded[0] ? ",\"other\":" : "\"other\":");
                    enc_i64(b, (int64_t)c->degraded_other);
                }
                buf_putc(b, '}');
            }
            buf_putc(b, '}');
        }
    buf_puts(b, "]}");
}

static void cdf_json(buf *b, const sketch *s)
{
    buf_putc(b, '[');
    for (int i = 0; s->n && i <= CDF_POINTS; i++) {
        double q = (double)i / CDF_POINTS;
        if (i) buf_putc(b, ',');
        buf_putc(b, '[');
        put_num(b, sketch_quantile(s, q) / 1e3);
        buf_putc(b, ',');
        put_num(b, q);
        buf_putc(b, ']');
    }
    buf_putc(b, ']');
}

static void marks_json(buf *b, const mark *m, size_t n)
{
    buf_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        buf_puts(b, i ? ",[" : "[");
        put_num(b, m[i].step);
        buf_putc(b, ',');
        put_num(b, m[i].value);
        buf_putc(b, ',');
        enc_cstr(b, m[i].label ? m[i].label : "");
        buf_putc(b, ']');
    }
    buf_putc(b, ']');
}

static void runs_json(buf *b, report *r)
{
    buf_puts(b, "\"runs\":[");
    for (size_t i = 0; i < r->nruns; i++) {
        run *x = &r->runs[i];
        buf_puts(b, i ? ",{" : "{");
        put_key(b, "run");
        enc_cstr(b, x->id);
        buf_puts(b, ",\"phase\":");
        enc_cstr(b, x->phase ? x->phase : (x->steps ? "train" : x->requests ? "serve" : "-"));
        buf_puts(b, ",\"model\":");
        enc_cstr(b, x->model ? x->model : "-");
        enc_member_double(b, "start", isfinite(x->first) ? x->first : NAN);
        enc_member_double(b, "end", isfinite(x->last) ? x->last : NAN);
        enc_member_i64(b, "requests", (int64_t)x->requests);
        enc_member_i64(b, "failed", (int64_t)x->failed);
        enc_member_i64(b, "steps", (int64_t)x->steps);
        enc_member_i64(b, "evals", (int64_t)x->evals);
        enc_member_i64(b, "errors", (int64_t)x->errors);
        buf_puts(b, ",\"reason\":");
        enc_cstr(b, x->reason ? x->reason : "-");
        trun *t = x->train;
        if (t) {
            buf_puts(b, t->by_minute ? ",\"x\":\"minute\"" : ",\"x\":\"step\"");
            enc_member_i64(b, "stride", (int64_t)t->stride);
            buf_puts(b, ",\"points\":[");
            for (size_t k = 0; k < t->npts; k++) {
                const point *p = &t->pts[k];
                buf_puts(b, k ? ",[" : "[");
                double v[6] = {p->step, p->loss, p->wall_ms, p->tok_s, p->lr, p->ts};
                for (int f = 0; f < 6; f++) {
                    if (f) buf_putc(b, ',');
                    put_num(b, v[f]);
                }
                buf_putc(b, ']');
            }
            buf_puts(b, "],\"evals_at\":");
            marks_json(b, t->evals, t->nevals);
            buf_puts(b, ",\"errors_at\":");
            marks_json(b, t->errors, t->nerrors);
        }
        buf_putc(b, '}');
    }
    buf_puts(b, "],\"runs_left_out\":");
    enc_i64(b, (int64_t)r->runs_over);
}

/* The data as JSON, safe inside <script>: "</" is written "<\/". */
static void page_data(buf *b, report *r, const source_stats *st, char **srcs, int ns)
{
    buf_puts(b, "{\"generated\":");
    put_num(b, (double)time(NULL));
    buf_puts(b, ",\"sources\":[");
    for (int i = 0; i < ns; i++) {
        if (i) buf_putc(b, ',');
        enc_cstr(b, srcs[i]);
    }
    buf_puts(b, "],\"events\":");
    enc_i64(b, (int64_t)st->events);
    buf_puts(b, ",\"tables\":[");
    for (int i = 0; i < r->ntables; i++) {
        if (i) buf_putc(b, ',');
        buf_puts(b, "{\"by\":[");
        agg *a = &r->tables[i];
        for (int k = 0; k < (a->nby ? a->nby : 1); k++) {
            if (k) buf_putc(b, ',');
            enc_cstr(b, a->nby ? key_name(a->by[k]) : "group");
        }
        buf_puts(b, "],\"stats\":");
        stats_json(a, st, b);
        buf_putc(b, '}');
    }
    buf_puts(b, "],\"models\":[");
    for (int m = 0; m < r->nmodels; m++) {
        if (m) buf_putc(b, ',');
        enc_cstr(b, r->models[m]);
    }
    if (r->nmodels == MODELS_MAX) buf_puts(b, ",\"other\"");
    buf_puts(b, "],\"series\":");
    series_json(b, &r->fine, r->nmodels, 0);
    buf_puts(b, ",\"daily\":");
    series_json(b, &r->daily, r->nmodels, 1);
    buf_puts(b, ",\"ttft_cdf\":");
    cdf_json(b, &r->all.ttft);
    buf_puts(b, ",\"tpot_cdf\":");
    cdf_json(b, &r->all.tpot);
    buf_putc(b, ',');
    runs_json(b, r);
    buf_putc(b, '}');
}

static void put_escaped_script(buf *out, const buf *data)
{
    for (size_t i = 0; i < data->len; i++) {
        if (data->p[i] == '<' && i + 1 < data->len && data->p[i + 1] == '/') {
            buf_puts(out, "<\\/");
            i++;
        } else {
            buf_putc(out, data->p[i]);
        }
    }
}

static int write_page(const char *path, const buf *data)
{
    buf page;
    buf_init(&page, MAX_OUT);
    buf_puts(&page, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
                    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                    "<title>tally report</title>\n<style>\n");
    buf_puts(&page, report_css);
    buf_puts(&page, "</style>\n</head>\n<body>\n<main id=\"report\"><p>This report draws its charts with the "
                    "script inside this file.</p></main>\n<script type=\"application/json\" id=\"tally-data\">");
    put_escaped_script(&page, data);
    buf_puts(&page, "</script>\n<script>\n");
    buf_puts(&page, report_js);
    buf_puts(&page, "</script>\n</body></html>\n");
    if (page.failed) {
        buf_free(&page);
        cli_error("report", "the report would be larger than %zu MB", MAX_OUT >> 20);
        return 1;
    }
    int rc = 0;
    if (!strcmp(path, "-")) {
        rc = fwrite(page.p, 1, page.len, stdout) != page.len;
    } else {
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *f = fopen(tmp, "wb");
        if (!f || fwrite(page.p, 1, page.len, f) != page.len || fclose(f) != 0 || rename(tmp, path) != 0) {
            cli_error("report", "cannot write %s: %s", path, strerror(errno));
            remove(tmp);
            rc = 1;
        }
    }
    buf_free(&page);
    return rc;
}

/* ---- the command ----------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tally report [options] SOURCE...\n"
            "\n"
            "Writes one self-contained HTML file (no network needed to open it) with:\n"
            "serving - the stats table per model and per engine (sortable), latency\n"
            "p50/p90/p99, requests/s and error rate over time, TTFT and time-per-output-token\n"
            "distributions, tokens and cost per day per model, degraded reasons and errors\n"
            "over time, energy per token; training - per run the loss curve (evals and\n"
            "errors marked), step time, tokens/s and learning rate; and the list of runs.\n"
            "Big inputs are aggregated while read: the file stays small.\n"
            "\n"
            "SOURCE: as for stats (JSONL files, run directories, '-', tally and OpenJarvis\n"
            "databases, clickhouse://HOST:PORT/DATABASE).\n"
            "\n"
            "  -o FILE          where to write it (default report.html; '-' = stdout)\n"
            "  --by KEYS        the stats table's keys (default model; a second table by engine)\n"
            "  --since WHEN     a duration back from now (30m, 24h, 7d) or an ISO-8601 time\n"
            "  --until WHEN     the same\n"
            "  --where K=V      keep events whose KEY is V (K!=V: is not); repeatable\n"
            "  --strict         fail on the first line that does not parse\n"
            THREADS_HELP
            "  -h, --help       this text\n");
}

static void report_free(report *r)
{
    for (int i = 0; i < r->ntables; i++) {
        agg *a = &r->tables[i];
        for (size_t k = 0; k < a->ng; k++) {
            agg_cell_free(&a->g[k]->c);
            free(a->g[k]->key);
            free(a->g[k]);
        }
        free(a->g);
        hindex_free(&a->idx);
    }
    series_free(&r->fine);
    series_free(&r->daily);
    agg_cell_free(&r->all);
    for (int m = 0; m < r->nmodels; m++) free(r->models[m]);
    for (size_t i = 0; i < r->nruns; i++) {
        run *x = &r->runs[i];
        free(x->id);
        free(x->model);
        free(x->phase);
        free(x->reason);
        if (x->train) {
            for (size_t k = 0; k < x->train->nevals; k++) free(x->train->evals[k].label);
            for (size_t k = 0; k < x->train->nerrors; k++) free(x->train->errors[k].label);
            free(x->train->pts);
            free(x->train);
        }
    }
}

int cmd_report(int argc, char **argv)
{
    report *r = calloc(1, sizeof *r);
    char **srcs = calloc((size_t)argc + 1, sizeof *srcs);
    if (!r || !srcs || series_init(&r->fine, 1.0 / 1024) || series_init(&r->daily, 86400)) {
        cli_error("report", "out of memory");
        if (r) {
            series_free(&r->fine);
            free(r);
        }
        free(srcs);
        return 1;
    }
    agg_cell_init(&r->all);
    source_opts o = {0};
    const char *out = "report.html", *since = NULL, *until = NULL, *by = NULL;
    int ns = 0, rc = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
            usage(stdout);
            goto out;
        } else if (!strcmp(s, "--strict")) {
            o.strict = 1;
        } else if (!strcmp(s, "--threads")) {
            if (cli_threads("report", val, &o.threads)) {
                rc = 2;
                goto out;
            }
            i++;
        } else if (!strcmp(s, "-o") || !strcmp(s, "--by") || !strcmp(s, "--since") || !strcmp(s, "--until") ||
                   !strcmp(s, "--where")) {
            if (!val) {
                cli_error("report", "%s needs a value", s);
                rc = 2;
                goto out;
            }
            i++;
            if (!strcmp(s, "-o")) out = val;
            else if (!strcmp(s, "--by")) by = val;
            else if (!strcmp(s, "--since")) since = val;
            else if (!strcmp(s, "--until")) until = val;
            else if (where_parse(r->w, &r->nw, val, "report")) {
                rc = 2;
                goto out;
            }
        } else if (s[0] == '-' && s[1]) {
            cli_error("report", "unknown option %s (try --help)", s);
            rc = 2;
            goto out;
        } else {
            srcs[ns++] = argv[i];
        }
    }
    if (!ns) {
        cli_error("report", "no SOURCE given (a file, directory, database or '-'; try --help)");
        rc = 2;
        goto out;
    }
    double now = (double)time(NULL);
    if ((since && parse_when(since, now, &o.since)) || (until && parse_when(until, now, &o.until))) {
        cli_error("report", "--since/--until: '%s' is neither a duration (30m, 24h, 7d) nor an ISO-8601 time",
                  since && parse_when(since, now, &o.since) ? since : until);
        rc = 2;
        goto out;
    }
    r->ntables = by ? 1 : 2;
    if (by_parse(&r->tables[0], by ? by : "model", "report")) {
        rc = 2;
        goto out;
    }
    if (!by) by_parse(&r->tables[1], "engine", "report");
    /* --where is applied once, here, for every part of the report.  A
     * database's rollup answers when every --by and --where key is one of
     * its keys (as for stats); otherwise rows are read. */
    int cells_ok = keys_in_rollup(&r->tables[0], r->w, r->nw) &&
                   (r->ntables < 2 || keys_in_rollup(&r->tables[1], NULL, 0));
    if (cells_ok) o.cells = on_report_cell;
    /* JSONL with every core: the parts that merge on the threads, the rest in file order. */
    static const par_ops report_par = {report_fork, agg_row, report_join, order_row};
    o.par = &report_par;
    source_stats st = {0};
    char err[600];
    if (cells_ok && ns == 1 && source_kind(srcs[0], err, sizeof err) == READ_SQLITE_TALLY) {
        /* Whole minutes: the time series' buckets are whole minutes too. */
        series_free(&r->fine);
        if (series_init(&r->fine, 60)) {
            cli_error("report", "out of memory");
            rc = 1;
            goto out;
        }
    }
    if (source_read_all(srcs, ns, &o, on_report_row, r, &st, err, sizeof err)) {
        cli_error("report", "%s", err);
        rc = 1;
        goto out;
    }
    for (int i = 0; i < r->ntables; i++) {
        if (r->tables[i].too_many) {
            cli_error("report", "more than %d groups: narrow --by or --where", MAX_GROUPS);
            rc = 1;
            goto out;
        }
        r->nomem |= r->tables[i].nomem;
        if (r->tables[i].ng) qsort(r->tables[i].g, r->tables[i].ng, sizeof *r->tables[i].g, cmp_group);
    }
    /* The distributions: every request is in one group of the first table. */
    for (size_t k = 0; k < r->tables[0].ng; k++) r->nomem |= agg_cell_merge(&r->all, &r->tables[0].g[k]->c) != 0;
    if (r->nomem) {
        cli_error("report", "out of memory");
        rc = 1;
        goto out;
    }
    buf data;
    buf_init(&data, MAX_OUT);
    page_data(&data, r, &st, srcs, ns);
    if (data.failed) {
        cli_error("report", "the report's data would be larger than %zu MB", MAX_OUT >> 20);
        rc = 1;
    } else {
        rc = write_page(out, &data);
    }
    buf_free(&data);
    if (!rc && strcmp(out, "-")) printf("wrote %s (%llu events)\n", out, (unsigned long long)st.events);
out:
    report_free(r);
    free(r);
    free(srcs);
    return rc;
}
