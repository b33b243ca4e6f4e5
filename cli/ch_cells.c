/*
 * ch_cells -- `tally stats` over ClickHouse, asked of the server: the
 * requests are grouped, counted, summed and put into histograms there,
 * and only one cell per group travels back (docs/clickhouse.md).
 *
 * Two queries over the requests, grouped by the keys the question needs:
 *   1. counts and sums (exact: integer sums are the server's, in Int64),
 *      and the minimum, maximum and sum of each percentile's values;
 *   2. per group, the number of requests in each bucket of tally's sketch
 *      (src/sketch.h: bucket i holds (g^(i-1), g^i]) for latency, time to
 *      first token and time per output token, and per degraded reason.
 * The histograms become the very sketches a file's reader would build (a
 * value exactly on a bucket boundary may land in the neighbouring bucket
 * when the server's logarithm rounds the other way: within the sketch's
 * bound), so percentiles agree with the files' within it and counts and
 * sums agree exactly.  Other events (training, errors, evaluations) are
 * few: they are read as rows, as before.
 *
 * The cells go to the same `cells` callback a database's rollup feeds.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clickhouse.h"
#include "ch_cells.h"
#include "stats.h"

#define MAX_CELLS MAX_GROUPS
#define REQUEST_SQL "kind = 'eval' AND name = 'request'"
#define TPOT_SQL                                                                                                   \
    "if(isNotNull(latency_us) AND ifNull(completion_tokens, 0) > 0, "                                              \
    "if(ifNull(ttft_us, 0) > 0 AND completion_tokens > 1, (latency_us - ttft_us) / (completion_tokens - 1), "      \
    "latency_us / completion_tokens), NULL)"

/* The SQL of a key, or NULL: labels, run, phase, kind, degraded, ok are
 * columns; day and hour become one time column (see time_key). */
static const char *key_column(int k)
{
    if (k < K_RUN) return tally_request_labels[k].key;
    switch (k) {
    case K_RUN: return "run_id";
    case K_PHASE: return "phase";
    case K_KIND: return "kind";
    case K_DEGRADED: return "degraded";
    case K_OK: return "ok";
    default: return NULL;
    }
}

/* 3600 when the question has hours, 86400 days, 0 neither. */
static int time_unit(const source_opts *o)
{
    int unit = 0;
    for (int i = 0; i < o->n_ch_keys; i++) {
        if (o->ch_keys[i] == K_HOUR) unit = 3600;
        else if (o->ch_keys[i] == K_DAY && !unit) unit = 86400;
    }
    return unit;
}

static void sql_str(buf *b, const char *p, size_t n)
{
    buf_putc(b, '\'');
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\'' || p[i] == '\\') buf_putc(b, '\\');
        buf_putc(b, p[i]);
    }
    buf_putc(b, '\'');
}

void ch_where_sql(const where *w, int nw, buf *out)
{
    for (int i = 0; i < nw; i++) {
        const char *col = key_column(w[i].key);
        if (!col) continue; /* day, hour: the cells are filtered on their keys */
        buf_puts(out, " AND ");
        if (w[i].neg) buf_puts(out, "NOT ");
        buf_putc(out, '(');
        int dash = w[i].len == 1 && w[i].value[0] == '-';
        if (w[i].key == K_OK) {
            if (dash) buf_puts(out, "isNull(ok)");
            else buf_puts(out, !strcmp(w[i].value, "true") ? "ok = 1" : !strcmp(w[i].value, "false") ? "ok = 0" : "0");
        } else {
            buf_puts(out, col);
            buf_puts(out, " = ");
            sql_str(out, dash ? "" : w[i].value, dash ? 0 : w[i].len);
        }
        buf_putc(out, ')');
    }
}

/* ---- answers ----------------------------------------------------------------------- */

static int is_null(const char *p, size_t n) { return n == 2 && p[0] == '\\' && p[1] == 'N'; }
static double num(const char *p, size_t n) { return is_null(p, n) ? 0 : strtod(p, NULL); }
static int64_t inum(const char *p, size_t n) { return is_null(p, n) ? 0 : strtoll(p, NULL, 10); }
static uint64_t unum(const char *p, size_t n) { return is_null(p, n) ? 0 : strtoull(p, NULL, 10); }

typedef struct cell {
    char *keys;               /* the key values, each ending in '\0' */
    size_t keylen;
    agg_cell c;
    double ext[3][3];         /* latency, ttft, tpot: min, max, sum (exact) */
} cell;

typedef struct cells {
    cell *v;
    size_t n, cap, at;
    int nk;                   /* key fields at the start of each line */
    int too_many, nomem, bad;
    double gamma;
} cells;

static size_t key_bytes(const size_t *fl, int nk)
{
    size_t n = 0;
    for (int i = 0; i < nk; i++) n += fl[i] + 1;
    return n;
}

static int same_keys(const cell *c, char **f, size_t *fl, int nk)
{
    if (c->keylen != key_bytes(fl, nk)) return 0;
    const char *p = c->keys;
    for (int i = 0; i < nk; i++) {
        if (memcmp(p, f[i], fl[i]) || p[fl[i]]) return 0;
        p += fl[i] + 1;
    }
    return 1;
}

enum { A_COUNT, A_FAILED, A_PROMPT, A_CACHED, A_CACHE_WRITE, A_COMPLETION, A_REASONING, A_COST_N, A_COST,
       A_LAT_N, A_LAT_SUM, A_LAT_MIN, A_LAT_MAX, A_TTFT_N, A_TTFT_SUM, A_TTFT_MIN, A_TTFT_MAX, A_TTFT_SKSUM,
       A_TPUT_N, A_TPUT_SUM, A_ENERGY_N, A_ENERGY, A_ENERGY_COMPLETION, A_GPU_N, A_GPU, A_TPOT_MIN, A_TPOT_MAX,
       A_TPOT_SUM, A_N };

static const char *const agg_sql[A_N] = {
    "count()", "countIf(ok = 0)", "sum(ifNull(prompt_tokens, 0))", "sum(ifNull(cached_tokens, 0))",
    "sum(ifNull(cache_write_tokens, 0))", "sum(ifNull(completion_tokens, 0))", "sum(ifNull(reasoning_tokens, 0))",
    "count(cost_nusd)", "sum(ifNull(cost_nusd, 0))", "count(latency_us)", "sum(ifNull(latency_us, 0))",
    "min(latency_us)", "max(latency_us)", "count(ttft_us)", "sum(ifNull(ttft_us, 0))",
    "minIf(ttft_us, ttft_us > 0)", "maxIf(ttft_us, ttft_us > 0)", "sumIf(ttft_us, ttft_us > 0)",
    "countIf(latency_us > 0)", "sumIf(ifNull(completion_tokens, 0) / (latency_us / 1e6), latency_us > 0)",
    "count(energy_j)", "sum(ifNull(energy_j, 0))", "sumIf(ifNull(completion_tokens, 0), isNotNull(energy_j))",
    "count(gpu_util_pct)", "sum(ifNull(gpu_util_pct, 0))", "min(" TPOT_SQL ")", "max(" TPOT_SQL ")",
    "sum(" TPOT_SQL ")"};

static int on_agg(void *ud, char *line, size_t len)
{
    cells *cs = ud;
    char *f[64];
    size_t fl[64];
    int n = ch_tsv_split(line, len, f, fl, 64);
    if (n != cs->nk + A_N) {
        cs->bad = 1;
        return 1;
    }
    if (cs->n == cs->cap) {
        if (cs->cap >= MAX_CELLS) {
            cs->too_many = 1;
            return 1;
        }
        size_t nc = cs->cap ? cs->cap * 2 : 64;
        cell *v = realloc(cs->v, nc * sizeof *v);
        if (!v) {
            cs->nomem = 1;
            return 1;
        }
        cs->v = v;
        cs->cap = nc;
    }
    cell *c = &cs->v[cs->n];
    memset(c, 0, sizeof *c);
    c->keylen = key_bytes(fl, cs->nk);
    c->keys = malloc(c->keylen + 1);
    if (!c->keys) {
        cs->nomem = 1;
        return 1;
    }
    char *p = c->keys;
    for (int i = 0; i < cs->nk; i++) {
        memcpy(p, f[i], fl[i]);
        p[fl[i]] = 0;
        p += fl[i] + 1;
    }
    agg_cell_init(&c->c);
    cs->n++;
    char **a = f + cs->nk;
    size_t *al = fl + cs->nk;
#define U(i) unum(a[i], al[i])
#define I(i) inum(a[i], al[i])
#define D(i) num(a[i], al[i])
    agg_cell *x = &c->c;
    x->requests = x->events = U(A_COUNT);
    x->failed = U(A_FAILED);
    x->prompt = I(A_PROMPT);
    x->cached = I(A_CACHED);
    x->cache_write = I(A_CACHE_WRITE);
    x->completion = I(A_COMPLETION);
    x->reasoning = I(A_REASONING);
    x->total_tokens = x->prompt + x->completion;
    x->cost_n = U(A_COST_N);
    x->cost_nusd = I(A_COST);
    x->unpriced = x->requests - x->cost_n;
    x->latency_n = U(A_LAT_N);
    x->latency_sum_us = D(A_LAT_SUM);
    x->ttft_n = U(A_TTFT_N);
    x->ttft_sum_us = D(A_TTFT_SUM);
    x->tput_n = U(A_TPUT_N);
    x->tput_sum = D(A_TPUT_SUM);
    x->energy_n = U(A_ENERGY_N);
    x->energy_j = D(A_ENERGY);
    x->energy_completion = D(A_ENERGY_COMPLETION);
    x->gpu_n = U(A_GPU_N);
    x->gpu_sum = D(A_GPU);
    double ext[3][3] = {{D(A_LAT_MIN), D(A_LAT_MAX), D(A_LAT_SUM)},
                        {D(A_TTFT_MIN), D(A_TTFT_MAX), D(A_TTFT_SKSUM)},
                        {D(A_TPOT_MIN), D(A_TPOT_MAX), D(A_TPOT_SUM)}};
    memcpy(c->ext, ext, sizeof ext);
#undef U
#undef I
#undef D
    return 0;
}

/* A bucket row: keys, which (1 latency, 2 ttft, 3 tpot, 4 degraded),
 * bucket (-1: below 1), reason, count. */
static int on_bucket(void *ud, char *line, size_t len)
{
    cells *cs = ud;
    char *f[64];
    size_t fl[64];
    int n = ch_tsv_split(line, len, f, fl, 64);
    if (n != cs->nk + 4) {
        cs->bad = 1;
        return 1;
    }
    /* Both answers come in the same order: look from where the last one was. */
    size_t k = 0;
    for (; k < cs->n; k++) {
        size_t j = (cs->at + k) % cs->n;
        if (same_keys(&cs->v[j], f, fl, cs->nk)) break;
    }
    if (k == cs->n) return 0; /* a group that appeared meanwhile: not in the counts, left out */
    cs->at = (cs->at + k) % cs->n;
    agg_cell *x = &cs->v[cs->at].c;
    char **a = f + cs->nk;
    size_t *al = fl + cs->nk;
    long which = strtol(a[0], NULL, 10), b = strtol(a[1], NULL, 10);
    uint64_t count = unum(a[3], al[3]);
    int rc = 0;
    if (which == 4) {
        rc = agg_cell_add_reason(x, a[2], al[2], count);
    } else if (which >= 1 && which <= 3) {
        sketch *s = which == 1 ? &x->latency : which == 2 ? &x->ttft : &x->tpot;
        double v = b < 0 ? 0.5 : 2 * pow(cs->gamma, (double)b) / (cs->gamma + 1);
        rc = sketch_add_n(s, v, count);
    }
    if (rc) {
        cs->nomem = 1;
        return 1;
    }
    return 0;
}

/* The SQL of a sketch's bucket for value expression v (Int32; -2: none). */
static void bucket_sql(buf *b, const char *v, const char *present, double log_gamma)
{
    char tmp[96];
    buf_puts(b, "if(NOT (");
    buf_puts(b, present);
    buf_puts(b, "), -2, if(assumeNotNull(");
    buf_puts(b, v);
    buf_puts(b, ") < 1, -1, least(");
    snprintf(tmp, sizeof tmp, "%d, toInt32(ceil(log(assumeNotNull(", SKETCH_BUCKETS - 1);
    buf_puts(b, tmp);
    buf_puts(b, v);
    snprintf(tmp, sizeof tmp, ")) / %.17g)))))", log_gamma);
    buf_puts(b, tmp);
}

int ch_read_cells(const ch_target *t, const char *final, const char *time_sql, const source_opts *o, void *ud,
                  source_stats *st, char *err, size_t errlen)
{
    cells cs;
    memset(&cs, 0, sizeof cs);
    cs.gamma = (1 + SKETCH_ALPHA) / (1 - SKETCH_ALPHA);
    int unit = time_unit(o);
    /* the keys, as SQL */
    buf keys, sql;
    buf_init(&keys, 4096);
    buf_init(&sql, (size_t)1 << 20);
    int nk = 0, kind_of[17];
    for (int i = 0; i < o->n_ch_keys && i < 16; i++) {
        const char *col = key_column(o->ch_keys[i]);
        if (!col) continue;
        int dup = 0;
        for (int j = 0; j < nk; j++) dup |= kind_of[j] == o->ch_keys[i];
        if (dup) continue;
        if (nk) buf_puts(&keys, ", ");
        buf_puts(&keys, col);
        kind_of[nk++] = o->ch_keys[i];
    }
    if (unit) {
        char tmp[64];
        snprintf(tmp, sizeof tmp, "%sintDiv(toInt64(ts), %d)", nk ? ", " : "", unit);
        buf_puts(&keys, tmp);
        kind_of[nk++] = -1;
    }
    buf_putc(&keys, 0);
    cs.nk = nk;
    const char *k = keys.p ? keys.p : "";
    const char *w = o->ch_where ? o->ch_where : "";
    int rc = -1;

    /* 1. counts and sums */
    buf_puts(&sql, "SELECT ");
    if (nk) {
        buf_puts(&sql, k);
        buf_puts(&sql, ", ");
    }
    for (int i = 0; i < A_N; i++) {
        if (i) buf_puts(&sql, ", ");
        buf_puts(&sql, agg_sql[i]);
    }
    buf_puts(&sql, " FROM ");
    buf_puts(&sql, t->db);
    buf_puts(&sql, ".events");
    buf_puts(&sql, final);
    buf_puts(&sql, " WHERE " REQUEST_SQL);
    buf_puts(&sql, time_sql);
    buf_puts(&sql, w);
    if (nk) {
        buf_puts(&sql, " GROUP BY ");
        buf_puts(&sql, k);
        buf_puts(&sql, " ORDER BY ");
        buf_puts(&sql, k);
    } else {
        buf_puts(&sql, " HAVING count() > 0");
    }
    buf_puts(&sql, " FORMAT TabSeparated");
    buf_putc(&sql, 0);
    if (sql.failed || keys.failed) {
        snprintf(err, errlen, "query too long");
        goto out;
    }
    if (ch_query_lines(t, sql.p, on_agg, &cs, err, errlen) != 200 && !cs.too_many && !cs.nomem && !cs.bad) goto out;

    /* 2. the histograms and degraded reasons */
    if (!cs.too_many && !cs.nomem && !cs.bad && cs.n) {
        double lg = log(cs.gamma);
        buf_reset(&sql);
        buf_puts(&sql, "SELECT ");
        if (nk) {
            buf_puts(&sql, k);
            buf_puts(&sql, ", ");
        }
        buf_puts(&sql, "tupleElement(x, 1) AS which, tupleElement(x, 2) AS bucket, tupleElement(x, 3) AS reason, "
                       "count() FROM ");
        buf_puts(&sql, t->db);
        buf_puts(&sql, ".events");
        buf_puts(&sql, final);
        buf_puts(&sql, " ARRAY JOIN arrayFilter(y -> tupleElement(y, 2) > -2, [(1, ");
        bucket_sql(&sql, "latency_us", "isNotNull(latency_us)", lg);
        buf_puts(&sql, ", ''), (2, ");
        bucket_sql(&sql, "ttft_us", "ifNull(ttft_us, 0) > 0", lg);
        buf_puts(&sql, ", ''), (3, ");
        bucket_sql(&sql, TPOT_SQL, "isNotNull(" TPOT_SQL ")", lg);
        buf_puts(&sql, ", ''), (4, if(degraded != '', 0, -2), degraded)]) AS x WHERE " REQUEST_SQL);
        buf_puts(&sql, time_sql);
        buf_puts(&sql, w);
        buf_puts(&sql, " GROUP BY ");
        if (nk) {
            buf_puts(&sql, k);
            buf_puts(&sql, ", ");
        }
        buf_puts(&sql, "which, bucket, reason ORDER BY ");
        if (nk) {
            buf_puts(&sql, k);
            buf_puts(&sql, ", ");
        }
        buf_puts(&sql, "which, bucket FORMAT TabSeparated");
        buf_putc(&sql, 0);
        if (sql.failed) {
            snprintf(err, errlen, "query too long");
            goto out;
        }
        if (ch_query_lines(t, sql.p, on_bucket, &cs, err, errlen) != 200 && !cs.nomem && !cs.bad) goto out;
    }
    if (cs.too_many) {
        snprintf(err, errlen, "more than %d groups: narrow --by or --where", MAX_CELLS);
        goto out;
    }
    if (cs.nomem || cs.bad) {
        snprintf(err, errlen, "%s", cs.nomem ? "out of memory" : "ClickHouse answered with rows tally did not ask for");
        goto out;
    }

    /* Events read: every request in the time range, as a file's reader
     * counts them, not only those --where kept. */
    if (*w) {
        buf_reset(&sql);
        buf_puts(&sql, "SELECT count() FROM ");
        buf_puts(&sql, t->db);
        buf_puts(&sql, ".events");
        buf_puts(&sql, final);
        buf_puts(&sql, " WHERE " REQUEST_SQL);
        buf_puts(&sql, time_sql);
        buf_putc(&sql, 0);
        buf out;
        buf_init(&out, 64);
        long status = sql.failed ? -1 : ch_request(t, sql.p, NULL, 0, &out, err, errlen);
        buf_putc(&out, 0);
        if (status == 200 && !out.failed) st->events += strtoull(out.p, NULL, 10);
        buf_free(&out);
        if (status != 200) goto out;
    }
    /* the cells, as a database's rollup gives them */
    for (size_t i = 0; i < cs.n; i++) {
        cell *c = &cs.v[i];
        sketch *sk[3] = {&c->c.latency, &c->c.ttft, &c->c.tpot};
        for (int s = 0; s < 3; s++) {
            if (!sk[s]->n) continue;
            sk[s]->min = c->ext[s][0];
            sk[s]->max = c->ext[s][1];
            sk[s]->sum = c->ext[s][2];
        }
        rollup_key rk;
        memset(&rk, 0, sizeof rk);
        rk.minute = -1;
        rk.ok = -1;
        rk.agg = AGG_REQUEST;
        rk.s[RK_KIND] = SV_LIT("eval");
        const char *p = c->keys;
        for (int j = 0; j < nk; j++) {
            size_t n = strlen(p);
            sv v = n ? (sv){p, n} : (sv){NULL, 0};
            int kk = kind_of[j];
            if (kk == -1) rk.minute = strtoll(p, NULL, 10) * (unit / 60);
            else if (kk == K_OK) rk.ok = is_null(p, n) ? -1 : (int)strtol(p, NULL, 10);
            else if (kk == K_RUN) rk.s[RK_RUN] = v;
            else if (kk == K_PHASE) rk.s[RK_PHASE] = v;
            else if (kk == K_KIND) rk.s[RK_KIND] = v;
            else if (kk == K_DEGRADED) rk.s[RK_DEGRADED] = v;
            else if (kk < K_RUN) rk.s[RK_LABEL(tally_request_labels[kk].slot)] = v;
            p += n + 1;
        }
        st->cells++;
        if (!*w) st->events += c->c.requests;
        if (o->cells(ud, &rk, &c->c)) break;
    }
    rc = 0;
out:
    for (size_t i = 0; i < cs.n; i++) {
        free(cs.v[i].keys);
        agg_cell_free(&cs.v[i].c);
    }
    free(cs.v);
    buf_free(&keys);
    buf_free(&sql);
    return rc;
}
