/* agg -- see agg.h. */
#include "agg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CELL_VERSION 1
#define MAX_REASON 256     /* a degraded reason is a short stable token */

void agg_cell_init(agg_cell *c)
{
    memset(c, 0, sizeof *c);
    sketch_init(&c->latency);
    sketch_init(&c->ttft);
    sketch_init(&c->tpot);
    sketch_init(&c->step_time);
    c->loss.min = INFINITY;
    c->loss.first_ts = c->loss.last_ts = NAN;
}

static void free_reasons(agg_cell *c)
{
    for (int i = 0; i < AGG_MAX_DEGRADED; i++) free(c->degraded[i]);
}

void agg_cell_free(agg_cell *c)
{
    sketch_free(&c->latency);
    sketch_free(&c->ttft);
    sketch_free(&c->tpot);
    sketch_free(&c->step_time);
    free_reasons(c);
    agg_cell_init(c);
}

void agg_cell_reset(agg_cell *c)
{
    sketch s[4] = {c->latency, c->ttft, c->tpot, c->step_time};
    for (int i = 0; i < 4; i++) sketch_reset(&s[i]);
    free_reasons(c);
    agg_cell_init(c);
    c->latency = s[0];
    c->ttft = s[1];
    c->tpot = s[2];
    c->step_time = s[3];
}

int agg_kind(const row *r)
{
    if (row_is_request(r)) return AGG_REQUEST;
    if (SV_IS(r->kind, "step")) return AGG_STEP;
    if (SV_IS(r->kind, "epoch")) return AGG_EPOCH;
    if (SV_IS(r->kind, "error")) return AGG_ERROR;
    if (SV_IS(r->kind, "eval") && (r->has & ROW_LOSS)) return AGG_EVAL;
    return AGG_NONE;
}

/* Reasons are kept sorted by name, so that a cell is the same whatever
 * order its events came in. */
static int add_reason(agg_cell *c, const char *p, size_t n, uint64_t count)
{
    if (n > MAX_REASON) n = MAX_REASON;
    int i = 0, cmp = 1;
    for (; i < AGG_MAX_DEGRADED && c->degraded[i]; i++) {
        size_t m = strlen(c->degraded[i]);
        cmp = memcmp(c->degraded[i], p, m < n ? m : n);
        if (!cmp) cmp = m < n ? -1 : m > n;
        if (cmp >= 0) break;
    }
    if (i < AGG_MAX_DEGRADED && c->degraded[i] && cmp == 0) {
        c->degraded_n[i] += count;
        return 0;
    }
    int used = 0;
    while (used < AGG_MAX_DEGRADED && c->degraded[used]) used++;
    if (used == AGG_MAX_DEGRADED) {
        c->degraded_other += count;
        return 0;
    }
    char *s = malloc(n + 1);
    if (!s) return -1;
    memcpy(s, p, n);
    s[n] = 0;
    memmove(&c->degraded[i + 1], &c->degraded[i], (size_t)(used - i) * sizeof c->degraded[0]);
    memmove(&c->degraded_n[i + 1], &c->degraded_n[i], (size_t)(used - i) * sizeof c->degraded_n[0]);
    c->degraded[i] = s;
    c->degraded_n[i] = count;
    return 0;
}

int agg_cell_add_reason(agg_cell *c, const char *p, size_t n, uint64_t count) { return add_reason(c, p, n, count); }

static int add_request(agg_cell *c, const row *r)
{
    int rc = 0;
    unsigned h = r->has;
    c->requests++;
    if ((h & ROW_OK) && !r->ok) c->failed++;
    c->prompt += r->prompt;
    c->cached += r->cached;
    c->cache_write += r->cache_write;
    c->completion += r->completion;
    c->reasoning += r->reasoning;
    c->total_tokens += (h & ROW_TOTAL) ? r->total_tokens : r->prompt + r->completion;
    if (h & ROW_COST) {
        c->cost_nusd += r->cost_nusd;
        c->cost_n++;
    } else if (h & ROW_COST_USD) {
        c->cost_usd += r->cost_usd;
        c->cost_n++;
    } else {
        c->unpriced++;
    }
    if (h & ROW_LATENCY) {
        c->latency_sum_us += r->latency_us;
        c->latency_n++;
        rc |= sketch_add(&c->latency, r->latency_us);
    }
    if (h & ROW_TTFT) {
        c->ttft_sum_us += r->ttft_us;
        c->ttft_n++;
        if (r->ttft_us > 0) rc |= sketch_add(&c->ttft, r->ttft_us);
    }
    if ((h & ROW_LATENCY) && r->completion > 0) {
        double tpot = (h & ROW_TTFT) && r->ttft_us > 0 && r->completion > 1
                          ? (r->latency_us - r->ttft_us) / (double)(r->completion - 1)
                          : r->latency_us / (double)r->completion;
        rc |= sketch_add(&c->tpot, tpot);
    }
    if (h & ROW_TPUT) {
        c->tput_sum += r->throughput;
        c->tput_n++;
    } else if ((h & ROW_LATENCY) && r->latency_us > 0) {
        c->tput_sum += (double)r->completion / (r->latency_us / 1e6);
        c->tput_n++;
    }
    if (h & ROW_ENERGY) {
        c->energy_j += r->energy_j;
        c->energy_completion += (double)r->completion;
        c->energy_n++;
    }
    if (h & ROW_GPU) {
        c->gpu_sum += r->gpu_util;
        c->gpu_n++;
    }
    if (r->degraded.p) rc |= add_reason(c, r->degraded.p, r->degraded.n, 1);
    return rc;
}

/* First and last across cells: by time, so that cells of different
 * minutes or processes combine in the order the events happened; a value
 * with no time keeps the order of merging.  `have`: into holds one. */
static void merge_track(agg_loss *into, int have, const agg_loss *from)
{
    if (!have) {
        *into = *from;
        return;
    }
    if (from->first_ts < into->first_ts) {
        into->first = from->first;
        into->first_ts = from->first_ts;
    }
    if (!(from->last_ts < into->last_ts)) {
        into->last = from->last;
        into->last_ts = from->last_ts;
    }
    if (from->min < into->min) into->min = from->min;
}

static int add_step(agg_cell *c, const row *r)
{
    int rc = 0;
    c->steps++;
    if (r->has & ROW_LOSS_NONFINITE) c->loss_nonfinite++;
    if (r->has & ROW_LOSS) {
        /* First and last by time (a step without one: in the order read),
         * as merging cells does. */
        double ts = (r->has & ROW_TS) ? r->ts : NAN;
        agg_loss one = {r->loss, ts, r->loss, ts, r->loss};
        merge_track(&c->loss, c->has_loss, &one);
        c->has_loss = 1;
    }
    if (r->has & ROW_WALL) {
        rc = sketch_add(&c->step_time, r->wall_us);
        c->step_wall_us += r->wall_us;
        if (r->has & ROW_STEP_TOKENS) {
            c->step_tokens += r->step_tokens;
            c->step_tokens_n++;
        }
    }
    return rc;
}

int agg_cell_add(agg_cell *c, const row *r)
{
    c->events++;
    switch (agg_kind(r)) {
    case AGG_REQUEST: return add_request(c, r);
    case AGG_STEP: return add_step(c, r);
    case AGG_EPOCH: c->epochs++; return 0;
    case AGG_EVAL: {
        double ts = (r->has & ROW_TS) ? r->ts : NAN;
        agg_loss one = {r->loss, ts, r->loss, ts, r->loss};
        merge_track(&c->eval, c->evals != 0, &one);
        c->evals++;
        return 0;
    }
    case AGG_ERROR:
        /* A server's errors go with its failed requests; these are the
         * training (or unattributed) ones. */
        if (!SV_IS(r->phase, "serve")) c->error_events++;
        return 0;
    default: return 0;
    }
}

static void merge_loss(agg_cell *into, const agg_cell *from)
{
    if (!from->has_loss) return;
    merge_track(&into->loss, into->has_loss, &from->loss);
    into->has_loss = 1;
}

/* Evaluations combine like losses; the best is the lowest. */
static void merge_eval(agg_cell *into, const agg_cell *from)
{
    if (!from->evals) return;
    merge_track(&into->eval, into->evals != 0, &from->eval);
    into->evals += from->evals;
}

static int merge(agg_cell *into, const agg_cell *from, int lean);

int agg_cell_merge(agg_cell *into, const agg_cell *from) { return merge(into, from, 0); }
int agg_cell_merge_lean(agg_cell *into, const agg_cell *from) { return merge(into, from, 1); }

static int merge(agg_cell *into, const agg_cell *from, int lean)
{
    int rc = 0;
    into->events += from->events;
    into->requests += from->requests;
    into->failed += from->failed;
    into->prompt += from->prompt;
    into->cached += from->cached;
    into->cache_write += from->cache_write;
    into->completion += from->completion;
    into->reasoning += from->reasoning;
    into->total_tokens += from->total_tokens;
    into->cost_n += from->cost_n;
    into->unpriced += from->unpriced;
    into->cost_nusd += from->cost_nusd;
    into->cost_usd += from->cost_usd;
    into->latency_sum_us += from->latency_sum_us;
    into->ttft_sum_us += from->ttft_sum_us;
    into->tput_sum += from->tput_sum;
    into->energy_j += from->energy_j;
    into->energy_completion += from->energy_completion;
    into->gpu_sum += from->gpu_sum;
    into->latency_n += from->latency_n;
    into->ttft_n += from->ttft_n;
    into->tput_n += from->tput_n;
    into->energy_n += from->energy_n;
    into->gpu_n += from->gpu_n;
    rc |= sketch_merge(&into->latency, &from->latency);
    if (!lean) {
        rc |= sketch_merge(&into->ttft, &from->ttft);
        rc |= sketch_merge(&into->tpot, &from->tpot);
        rc |= sketch_merge(&into->step_time, &from->step_time);
    }
    for (int i = 0; i < AGG_MAX_DEGRADED && from->degraded[i]; i++)
        rc |= add_reason(into, from->degraded[i], strlen(from->degraded[i]), from->degraded_n[i]);
    into->degraded_other += from->degraded_other;
    into->steps += from->steps;
    into->loss_nonfinite += from->loss_nonfinite;
    into->epochs += from->epochs;
    into->error_events += from->error_events;
    merge_loss(into, from);
    merge_eval(into, from);
    into->step_wall_us += from->step_wall_us;
    into->step_tokens += from->step_tokens;
    into->step_tokens_n += from->step_tokens_n;
    return rc;
}

/* ---- bytes ------------------------------------------------------------------- */

static void put_svarint(buf *b, int64_t v)
{
    put_uvarint(b, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
}

static int get_svarint(const unsigned char *p, size_t n, size_t *at, int64_t *out)
{
    uint64_t u;
    if (get_uvarint(p, n, at, &u)) return -1;
    *out = (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
    return 0;
}

/* The fields in one order for both directions.  U: uint64, S: int64,
 * D: double. */
#define CELL_FIELDS(U, S, D)                                                                         \
    U(events) U(requests) U(failed) S(prompt) S(cached) S(cache_write) S(completion) S(reasoning) \
    S(total_tokens) U(cost_n) U(unpriced) S(cost_nusd) D(cost_usd) D(latency_sum_us) D(ttft_sum_us) \
    D(tput_sum) D(energy_j) D(energy_completion) D(gpu_sum) U(latency_n) U(ttft_n) U(tput_n)      \
    U(energy_n) U(gpu_n) U(degraded_other) U(steps) U(epochs) U(error_events) D(step_wall_us)        \
    S(step_tokens) U(step_tokens_n)

void agg_cell_encode(const agg_cell *c, buf *b)
{
    buf_putc(b, CELL_VERSION);
#define PU(f) put_uvarint(b, c->f);
#define PS(f) put_svarint(b, c->f);
#define PD(f) put_f64(b, c->f);
    CELL_FIELDS(PU, PS, PD)
#undef PU
#undef PS
#undef PD
    buf_putc(b, (char)c->has_loss);
    if (c->has_loss) {
        put_f64(b, c->loss.first);
        put_f64(b, c->loss.first_ts);
        put_f64(b, c->loss.last);
        put_f64(b, c->loss.last_ts);
        put_f64(b, c->loss.min);
    }
    sketch_encode(&c->latency, b);
    sketch_encode(&c->ttft, b);
    sketch_encode(&c->tpot, b);
    sketch_encode(&c->step_time, b);
    int nr = 0;
    while (nr < AGG_MAX_DEGRADED && c->degraded[nr]) nr++;
    put_uvarint(b, (uint64_t)nr);
    for (int i = 0; i < nr; i++) {
        size_t len = strlen(c->degraded[i]);
        put_uvarint(b, len);
        buf_put(b, c->degraded[i], len);
        put_uvarint(b, c->degraded_n[i]);
    }
    /* Trailers, absent from cells written before they existed (and left
     * out while empty): the non-finite losses, then the evaluations. */
    if (c->loss_nonfinite || c->evals) put_uvarint(b, c->loss_nonfinite);
    if (c->evals) {
        put_uvarint(b, c->evals);
        put_f64(b, c->eval.first);
        put_f64(b, c->eval.first_ts);
        put_f64(b, c->eval.last);
        put_f64(b, c->eval.last_ts);
        put_f64(b, c->eval.min);
    }
}

int agg_cell_decode_merge(agg_cell *c, const void *data, size_t n)
{
    const unsigned char *p = data;
    size_t at = 0;
    if (!p || n < 1 || p[at++] != CELL_VERSION) return -1;
    /* Decoded into a cell of its own, merged only when all of it read. */
    agg_cell t;
    agg_cell_init(&t);
    int rc = -1;
#define GU(f) if (get_uvarint(p, n, &at, &t.f)) goto out;
#define GS(f) if (get_svarint(p, n, &at, &t.f)) goto out;
#define GD(f) if (get_f64(p, n, &at, &t.f)) goto out;
    CELL_FIELDS(GU, GS, GD)
#undef GU
#undef GS
#undef GD
    if (at >= n || p[at] > 1) goto out;
    t.has_loss = p[at++];
    if (t.has_loss && (get_f64(p, n, &at, &t.loss.first) || get_f64(p, n, &at, &t.loss.first_ts) ||
                       get_f64(p, n, &at, &t.loss.last) || get_f64(p, n, &at, &t.loss.last_ts) ||
                       get_f64(p, n, &at, &t.loss.min)))
        goto out;
    sketch *sk[4] = {&t.latency, &t.ttft, &t.tpot, &t.step_time};
    for (int i = 0; i < 4; i++) {
        long used = sketch_decode_merge(sk[i], p + at, n - at);
        if (used < 0) goto out;
        at += (size_t)used;
    }
    uint64_t nr;
    if (get_uvarint(p, n, &at, &nr) || nr > AGG_MAX_DEGRADED) goto out;
    for (uint64_t i = 0; i < nr; i++) {
        uint64_t len, cnt;
        if (get_uvarint(p, n, &at, &len) || len > MAX_REASON || n - at < len || memchr(p + at, 0, len)) goto out;
        const unsigned char *s = p + at;
        at += len;
        if (get_uvarint(p, n, &at, &cnt) || add_reason(&t, (const char *)s, len, cnt)) goto out;
    }
    if (at < n && get_uvarint(p, n, &at, &t.loss_nonfinite)) goto out;
    if (at < n && (get_uvarint(p, n, &at, &t.evals) || !t.evals || get_f64(p, n, &at, &t.eval.first) ||
                   get_f64(p, n, &at, &t.eval.first_ts) || get_f64(p, n, &at, &t.eval.last) ||
                   get_f64(p, n, &at, &t.eval.last_ts) || get_f64(p, n, &at, &t.eval.min)))
        goto out;
    if (at != n) goto out;
    rc = agg_cell_merge(c, &t);
out:
    agg_cell_free(&t);
    return rc;
}
