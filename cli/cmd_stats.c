/*
 * tally stats -- cost, tokens, latency, energy per group, with percentiles.
 *
 * Every source's events go through one aggregator: groups keyed by the
 * --by fields, each with counters and mergeable sketches (src/sketch.h).
 * One column table drives the aligned table, --csv and --json alike, so
 * the three outputs can never disagree.  Definitions: docs/stats.md.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "encode.h"
#include "agg.h"
#include "prices.h"
#include "source.h"
#include "hash.h"
#include "record.h"
#include "util.h"

#define MAX_BY 8
#define MAX_WHERE 16
#define MAX_GROUPS 100000
#define MAX_KEY 2048

typedef struct group {
    char *key;                 /* the --by values joined by '\x1f' */
    size_t keylen;
    uint64_t hash;
    agg_cell c;
} group;

typedef struct where {
    int key;
    int neg;
    const char *value;
    size_t len;
} where;

typedef struct agg {
    int by[MAX_BY], nby;
    where w[MAX_WHERE];
    int nw;
    group **g;
    size_t ng, cap;
    /* open-addressing index over g */
    size_t *slot;
    size_t nslot;
    int too_many, nomem;
    prices prices;       /* --prices: re-cost every request */
    int reprice;
} agg;

/* ---- keys -------------------------------------------------------------- */

/* Keys: first one per named request field (src/fields.h, in its order),
 * then the event's own. */
enum { K_RUN = RQ_NLABELS, K_PHASE, K_KIND, K_OK, K_ERROR, K_DEGRADED, K_DAY, K_HOUR, K_N };
static const char *const own_keys[K_N - K_RUN] = {"run", "phase", "kind", "ok", "error", "degraded", "day", "hour"};

static const char *key_name(int k) { return k < K_RUN ? tally_request_labels[k].key : own_keys[k - K_RUN]; }

static int key_index(const char *s)
{
    for (int i = 0; i < K_N; i++)
        if (!strcmp(s, key_name(i))) return i;
    if (!strcmp(s, "principal")) return RQ_PRINCIPAL_ID;
    if (!strcmp(s, "run_id")) return K_RUN;
    return -1;
}

/* "model, engine, ..., hour": every key, for --help and errors. */
static void key_list(char *out, size_t n)
{
    size_t k = 0;
    out[0] = 0;
    for (int i = 0; i < K_N && k < n; i++)
        k += (size_t)snprintf(out + k, n - k, "%s%s", i ? ", " : "", key_name(i));
}

/* Keys the database's rollup has (src/rollup.h); the others (principal,
 * request ids, error text) would make its cells as many as its rows, so
 * questions about them read rows. */
static int key_in_rollup(int k)
{
    if (k < K_RUN) return (tally_request_labels[k].flags & FLD_ROLLUP) != 0;
    return k != K_ERROR;
}

static sv or_dash(sv v) { return v.p ? v : SV_LIT("-"); }

static sv key_value(const row *e, int k, char *tmp, size_t n)
{
    if (k < K_RUN) return or_dash(*FIELD_CSV(e, &tally_request_labels[k]));
    switch (k) {
    case K_RUN: return or_dash(e->run_id);
    case K_PHASE: return or_dash(e->phase);
    case K_KIND: return or_dash(e->kind);
    case K_OK: return (e->has & ROW_OK) ? (e->ok ? SV_LIT("true") : SV_LIT("false")) : SV_LIT("-");
    case K_ERROR: return or_dash(e->error);
    case K_DEGRADED: return or_dash(e->degraded);
    case K_DAY:
    case K_HOUR: {
        if (!(e->has & ROW_TS)) return SV_LIT("-");
        time_t t = (time_t)floor(e->ts);
        struct tm tm;
        gmtime_r(&t, &tm);
        size_t len = strftime(tmp, n, k == K_DAY ? "%Y-%m-%d" : "%Y-%m-%dT%H", &tm);
        return (sv){tmp, len};
    }
    }
    return SV_LIT("-");
}

static uint64_t hash_bytes(const char *s, size_t n) { return fnv1a(FNV_SEED, s, n); }

static group *group_new(const char *key, size_t n, uint64_t hash)
{
    group *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->key = malloc(n + 1);
    if (!g->key) {
        free(g);
        return NULL;
    }
    memcpy(g->key, key, n);
    g->key[n] = 0;
    g->keylen = n;
    g->hash = hash;
    agg_cell_init(&g->c);
    return g;
}

static group *group_for(agg *a, const char *key, size_t n)
{
    if (a->ng * 2 >= a->nslot) {
        size_t ns = a->nslot ? a->nslot * 2 : 256;
        size_t *nsl = malloc(ns * sizeof *nsl);
        if (!nsl) return NULL;
        for (size_t i = 0; i < ns; i++) nsl[i] = SIZE_MAX;
        for (size_t i = 0; i < a->ng; i++) {
            size_t h = a->g[i]->hash & (ns - 1);
            while (nsl[h] != SIZE_MAX) h = (h + 1) & (ns - 1);
            nsl[h] = i;
        }
        free(a->slot);
        a->slot = nsl;
        a->nslot = ns;
    }
    uint64_t hash = hash_bytes(key, n);
    size_t h = hash & (a->nslot - 1);
    while (a->slot[h] != SIZE_MAX) {
        group *g = a->g[a->slot[h]];
        if (g->hash == hash && g->keylen == n && !memcmp(g->key, key, n)) return g;
        h = (h + 1) & (a->nslot - 1);
    }
    if (a->ng >= MAX_GROUPS) {
        a->too_many = 1;
        return NULL;
    }
    if (a->ng == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 64;
        group **ng = realloc(a->g, nc * sizeof *ng);
        if (!ng) return NULL;
        a->g = ng;
        a->cap = nc;
    }
    group *g = group_new(key, n, hash);
    if (!g) return NULL;
    a->slot[h] = a->ng;
    a->g[a->ng++] = g;
    return g;
}

/* The group of an event that passes --where, or NULL (filtered out, or no
 * memory: a->nomem / a->too_many say which). */
static group *group_of(agg *a, const row *e)
{
    char tmp[64];
    for (int i = 0; i < a->nw; i++) {
        sv v = key_value(e, a->w[i].key, tmp, sizeof tmp);
        int eq = v.n == a->w[i].len && !memcmp(v.p, a->w[i].value, v.n);
        if (eq == a->w[i].neg) return NULL;
    }
    if (!a->nby) return group_for(a, "all", 3);
    char key[MAX_KEY];
    size_t n = 0;
    for (int i = 0; i < a->nby; i++) {
        sv v = key_value(e, a->by[i], tmp, sizeof tmp);
        if (i && n < sizeof key) key[n++] = '\x1f';
        size_t k = v.n < sizeof key - n ? v.n : sizeof key - n;
        memcpy(key + n, v.p, k);
        n += k;
    }
    return group_for(a, key, n);
}

static int on_row(void *ud, const row *e)
{
    agg *a = ud;
    /* Only what stats reports: requests, training steps/epochs, errors. */
    if (agg_kind(e) == AGG_NONE) return 0;
    group *g = group_of(a, e);
    if (!g) return a->too_many;
    if (row_is_request(e) && a->reprice) {
        /* --prices: the stored cost is replaced by the file's, at the price
         * of the request's day; no price means unpriced, not $0. */
        row priced = *e;
        cost c;
        char model[256];
        priced.has &= ~(unsigned)(ROW_COST | ROW_COST_USD);
        snprintf(model, sizeof model, "%.*s", (int)e->model.n, e->model.p ? e->model.p : "");
        if (e->model.p && prices_cost(&a->prices, model, (e->has & ROW_TS) ? e->ts : 0, e->prompt, e->cached,
                                      e->cache_write, e->completion, e->reasoning, &c) == 0) {
            priced.cost_nusd = c.total;
            priced.has |= ROW_COST;
        }
        a->nomem |= agg_cell_add(&g->c, &priced) != 0;
        return a->nomem;
    }
    a->nomem |= agg_cell_add(&g->c, e) != 0;
    return a->nomem;
}

/* A cell of a database's rollup: its keys make a row of no measures, which
 * goes through the same --where and --by as events. */
static int on_cell(void *ud, const rollup_key *k, const agg_cell *c)
{
    agg *a = ud;
    if (k->agg == AGG_NONE) return 0;
    row e;
    rollup_key_row(k, &e);
    group *g = group_of(a, &e);
    if (!g) return a->too_many;
    a->nomem |= agg_cell_merge(&g->c, c) != 0;
    return a->nomem;
}

/* ---- columns ------------------------------------------------------------- */

enum { F_INT, F_NUM, F_USD, F_MS, F_PCT, F_STR };
typedef struct column {
    const char *name;        /* csv / json name */
    const char *head;        /* table heading; NULL = not in the table */
    int fmt, training;
} column;

static const column cols[] = {
    {"requests", "reqs", F_INT, 0},
    {"errors", NULL, F_INT, 0},
    {"error_rate", "err%", F_PCT, 0},
    {"prompt_tokens", "prompt", F_INT, 0},
    {"cached_tokens", "cached", F_INT, 0},
    {"cache_write_tokens", NULL, F_INT, 0},
    {"completion_tokens", "compl", F_INT, 0},
    {"reasoning_tokens", NULL, F_INT, 0},
    {"total_tokens", NULL, F_INT, 0},
    {"cost_usd", "cost$", F_USD, 0},
    {"unpriced", NULL, F_INT, 0},
    {"latency_total_s", NULL, F_NUM, 0},
    {"latency_mean_ms", "lat_mean", F_MS, 0},
    {"latency_p50_ms", "p50", F_MS, 0},
    {"latency_p90_ms", "p90", F_MS, 0},
    {"latency_p99_ms", "p99", F_MS, 0},
    {"latency_max_ms", "max", F_MS, 0},
    {"ttft_avg_ms", NULL, F_MS, 0},
    {"ttft_p50_ms", "ttft50", F_MS, 0},
    {"ttft_p90_ms", NULL, F_MS, 0},
    {"ttft_p99_ms", "ttft99", F_MS, 0},
    {"tpot_p50_ms", "tpot50", F_MS, 0},
    {"throughput_tok_s", "tok/s", F_NUM, 0},
    {"energy_j", "energy_J", F_NUM, 0},
    {"j_per_output_token", "J/tok", F_NUM, 0},
    {"gpu_util_avg_pct", NULL, F_NUM, 0},
    {"degraded", "degraded", F_STR, 0},
    {"steps", "steps", F_INT, 1},
    {"epochs", "epochs", F_INT, 1},
    {"loss_first", "loss_first", F_NUM, 1},
    {"loss_last", "loss_last", F_NUM, 1},
    {"loss_min", "loss_min", F_NUM, 1},
    {"loss_nonfinite", "nan_loss", F_INT, 1},
    {"step_p50_ms", "step_p50", F_MS, 1},
    {"step_p99_ms", "step_p99", F_MS, 1},
    {"train_tokens_per_s", "tok/s", F_NUM, 1},
    {"error_events", "errors", F_INT, 1},
};
#define NCOLS (sizeof cols / sizeof cols[0])

static double ratio(double a, double b) { return b > 0 ? a / b : NAN; }

/* The value of column c for group g (NAN = not defined). */
static double col_value(const agg_cell *g, size_t c)
{
    const char *n = cols[c].name;
#define IS(s) (!strcmp(n, s))
    if (IS("requests")) return (double)g->requests;
    if (IS("errors")) return (double)g->failed;
    if (IS("error_rate")) return ratio(100.0 * (double)g->failed, (double)g->requests);
    if (IS("prompt_tokens")) return (double)g->prompt;
    if (IS("cached_tokens")) return (double)g->cached;
    if (IS("cache_write_tokens")) return (double)g->cache_write;
    if (IS("completion_tokens")) return (double)g->completion;
    if (IS("reasoning_tokens")) return (double)g->reasoning;
    if (IS("total_tokens")) return (double)g->total_tokens;
    if (IS("cost_usd")) return g->cost_n ? agg_cost_usd(g) : NAN;
    if (IS("unpriced")) return (double)g->unpriced;
    if (IS("latency_total_s")) return g->latency_n ? g->latency_sum_us / 1e6 : NAN;
    if (IS("latency_mean_ms")) return ratio(g->latency_sum_us / 1e3, (double)g->latency_n);
    if (IS("latency_p50_ms")) return sketch_quantile(&g->latency, 0.50) / 1e3;
    if (IS("latency_p90_ms")) return sketch_quantile(&g->latency, 0.90) / 1e3;
    if (IS("latency_p99_ms")) return sketch_quantile(&g->latency, 0.99) / 1e3;
    if (IS("latency_max_ms")) return g->latency.n ? g->latency.max / 1e3 : NAN;
    if (IS("ttft_avg_ms")) return ratio(g->ttft_sum_us / 1e3, (double)g->ttft_n);
    if (IS("ttft_p50_ms")) return sketch_quantile(&g->ttft, 0.50) / 1e3;
    if (IS("ttft_p90_ms")) return sketch_quantile(&g->ttft, 0.90) / 1e3;
    if (IS("ttft_p99_ms")) return sketch_quantile(&g->ttft, 0.99) / 1e3;
    if (IS("tpot_p50_ms")) return sketch_quantile(&g->tpot, 0.50) / 1e3;
    if (IS("throughput_tok_s")) return ratio(g->tput_sum, (double)g->tput_n);
    if (IS("energy_j")) return g->energy_n ? g->energy_j : NAN;
    if (IS("j_per_output_token")) return g->energy_n ? ratio(g->energy_j, g->energy_completion) : NAN;
    if (IS("gpu_util_avg_pct")) return ratio(g->gpu_sum, (double)g->gpu_n);
    if (IS("steps")) return (double)g->steps;
    if (IS("epochs")) return (double)g->epochs;
    if (IS("loss_first")) return g->has_loss ? g->loss_first : NAN;
    if (IS("loss_last")) return g->has_loss ? g->loss_last : NAN;
    if (IS("loss_min")) return g->has_loss ? g->loss_min : NAN;
    if (IS("loss_nonfinite")) return (double)g->loss_nonfinite;
    if (IS("step_p50_ms")) return sketch_quantile(&g->step_time, 0.50) / 1e3;
    if (IS("step_p99_ms")) return sketch_quantile(&g->step_time, 0.99) / 1e3;
    if (IS("train_tokens_per_s")) return g->step_tokens_n ? ratio((double)g->step_tokens, g->step_wall_us / 1e6) : NAN;
    if (IS("error_events")) return (double)g->error_events;
#undef IS
    return NAN;
}

static void degraded_str(const agg_cell *g, char *out, size_t n)
{
    size_t k = 0;
    out[0] = 0;
    for (int i = 0; i < AGG_MAX_DEGRADED && g->degraded[i]; i++)
        k += (size_t)snprintf(out + k, k < n ? n - k : 0, "%s%s:%llu", k ? " " : "", g->degraded[i],
                              (unsigned long long)g->degraded_n[i]);
    if (g->degraded_other && k < n)
        snprintf(out + k, n - k, "%sother:%llu", k ? " " : "", (unsigned long long)g->degraded_other);
}

static void fmt_cell(const agg_cell *g, size_t c, int human, char *out, size_t n)
{
    if (cols[c].fmt == F_STR) {
        degraded_str(g, out, n);
        if (human && !out[0]) snprintf(out, n, "-");
        return;
    }
    double v = col_value(g, c);
    if (v != v) {
        snprintf(out, n, "%s", human ? "-" : "");
        return;
    }
    switch (cols[c].fmt) {
    case F_INT: snprintf(out, n, "%.0f", v); break;
    case F_USD: snprintf(out, n, human ? "%.4f" : "%.9f", v); break;
    case F_PCT: snprintf(out, n, human ? "%.1f" : "%.4f", v); break;
    case F_MS: snprintf(out, n, human ? "%.1f" : "%.3f", v); break;
    default:
        if (!human) snprintf(out, n, "%.10g", v);
        else if (fabs(v) >= 1e4) snprintf(out, n, "%.0f", v);
        else if (fabs(v) >= 100) snprintf(out, n, "%.1f", v);
        else snprintf(out, n, "%.4g", v);
        break;
    }
}

/* ---- output --------------------------------------------------------------- */

static int cmp_group(const void *a, const void *b)
{
    return strcmp((*(group *const *)a)->key, (*(group *const *)b)->key);
}

static void split_key(const char *key, char parts[MAX_BY][256], int n)
{
    const char *p = key;
    for (int i = 0; i < n; i++) {
        const char *sep = strchr(p, '\x1f');
        size_t len = sep ? (size_t)(sep - p) : strlen(p);
        snprintf(parts[i], 256, "%.*s", (int)len, p);
        p = sep ? sep + 1 : p + len;
    }
}

static void print_table(agg *a, int training)
{
    int escape_ctl = isatty(STDOUT_FILENO) || getenv("TALLY_ESCAPE_CONTROLS");
    int nkeys = a->nby ? a->nby : 1;
    size_t sel[NCOLS], ns = 0;
    for (size_t c = 0; c < NCOLS; c++)
        if (cols[c].head && cols[c].training == training) sel[ns++] = c;
    /* rows: groups with something of this section */
    size_t nrows = 0;
    for (size_t i = 0; i < a->ng; i++) {
        const agg_cell *g = &a->g[i]->c;
        if (training ? (g->steps || g->epochs || (g->error_events && !g->requests)) : g->requests != 0) nrows++;
    }
    if (training && !nrows) return;
    size_t ncell = (size_t)nkeys + ns;
    char (*cells)[256] = calloc((nrows + 1) * ncell, 256);
    size_t *w = calloc(ncell, sizeof *w);
    for (int k = 0; k < nkeys; k++) snprintf(cells[k], 256, "%s", a->nby ? key_name(a->by[k]) : "group");
    for (size_t j = 0; j < ns; j++) snprintf(cells[nkeys + j], 256, "%s", cols[sel[j]].head);
    size_t r = 1;
    for (size_t i = 0; i < a->ng; i++) {
        const agg_cell *g = &a->g[i]->c;
        if (!(training ? (g->steps || g->epochs || (g->error_events && !g->requests)) : g->requests != 0)) continue;
        char parts[MAX_BY][256];
        split_key(a->g[i]->key, parts, nkeys);
        for (int k = 0; k < nkeys; k++) snprintf(cells[r * ncell + k], 256, "%.250s", parts[k]);
        for (size_t j = 0; j < ns; j++) fmt_cell(g, sel[j], 1, cells[r * ncell + nkeys + j], 256);
        r++;
    }
    /* Group keys and reasons come from event data: on a terminal their
     * control characters are shown, not obeyed. */
    if (escape_ctl) {
        char tmp[256];
        for (size_t i = 1; i < r; i++)
            for (size_t j = 0; j < ncell; j++) {
                char *c = cells[i * ncell + j];
                cli_escape_ctl(c, strlen(c), tmp, sizeof tmp);
                memcpy(c, tmp, strlen(tmp) + 1);
            }
    }
    for (size_t i = 0; i < r; i++)
        for (size_t j = 0; j < ncell; j++)
            if (strlen(cells[i * ncell + j]) > w[j]) w[j] = strlen(cells[i * ncell + j]);
    if (training) printf("\ntraining\n");
    for (size_t i = 0; i < r; i++) {
        for (size_t j = 0; j < ncell; j++) {
            const char *s = cells[i * ncell + j];
            /* keys left-aligned, numbers right-aligned, the last column as is */
            if (j < (size_t)nkeys) printf("%-*s", (int)w[j], s);
            else if (j + 1 == ncell && cols[sel[j - nkeys]].fmt == F_STR) printf("%s", s);
            else printf("%*s", (int)w[j], s);
            if (j + 1 < ncell) printf("  ");
        }
        printf("\n");
    }
    free(cells);
    free(w);
}

static void csv_field(const char *s)
{
    if (strpbrk(s, ",\"\n")) {
        putchar('"');
        for (; *s; s++) {
            if (*s == '"') putchar('"');
            putchar(*s);
        }
        putchar('"');
    } else {
        fputs(s, stdout);
    }
}

static void print_csv(agg *a)
{
    int nkeys = a->nby ? a->nby : 1;
    for (int k = 0; k < nkeys; k++) printf("%s%s", k ? "," : "", a->nby ? key_name(a->by[k]) : "group");
    for (size_t c = 0; c < NCOLS; c++) printf(",%s", cols[c].name);
    printf("\n");
    for (size_t i = 0; i < a->ng; i++) {
        char parts[MAX_BY][256], cell[512];
        split_key(a->g[i]->key, parts, nkeys);
        for (int k = 0; k < nkeys; k++) {
            if (k) putchar(',');
            csv_field(parts[k]);
        }
        for (size_t c = 0; c < NCOLS; c++) {
            fmt_cell(&a->g[i]->c, c, 0, cell, sizeof cell);
            putchar(',');
            csv_field(cell);
        }
        printf("\n");
    }
}

static void print_json(agg *a, const source_stats *st)
{
    int nkeys = a->nby ? a->nby : 1;
    buf b;
    buf_init(&b, (size_t)1 << 30);
    buf_puts(&b, "{\"groups\":[");
    for (size_t i = 0; i < a->ng; i++) {
        const agg_cell *g = &a->g[i]->c;
        char parts[MAX_BY][256];
        split_key(a->g[i]->key, parts, nkeys);
        buf_puts(&b, i ? ",{" : "{");
        for (int k = 0; k < nkeys; k++) {
            if (k) buf_putc(&b, ',');
            enc_cstr(&b, a->nby ? key_name(a->by[k]) : "group");
            buf_putc(&b, ':');
            enc_cstr(&b, parts[k]);
        }
        for (size_t c = 0; c < NCOLS; c++) {
            buf_putc(&b, ',');
            enc_cstr(&b, cols[c].name);
            buf_putc(&b, ':');
            if (cols[c].fmt == F_STR) {
                buf_putc(&b, '{');
                for (int d = 0; d < AGG_MAX_DEGRADED && g->degraded[d]; d++) {
                    if (d) buf_putc(&b, ',');
                    enc_cstr(&b, g->degraded[d]);
                    buf_putc(&b, ':');
                    enc_i64(&b, (int64_t)g->degraded_n[d]);
                }
                if (g->degraded_other) {
                    buf_puts(&b, g->degraded[0] ? ",\"other\":" : "\"other\":");
                    enc_i64(&b, (int64_t)g->degraded_other);
                }
                buf_putc(&b, '}');
            } else {
                enc_double(&b, col_value(g, c));
            }
        }
        buf_putc(&b, '}');
    }
    buf_puts(&b, "],\"events\":");
    enc_i64(&b, (int64_t)st->events);
    buf_puts(&b, ",\"skipped_lines\":");
    enc_i64(&b, (int64_t)st->bad);
    buf_puts(&b, ",\"torn_lines\":");
    enc_i64(&b, (int64_t)st->torn);
    buf_puts(&b, ",\"duplicates\":");
    enc_i64(&b, (int64_t)st->duplicates);
    buf_puts(&b, ",\"rollup_cells\":");
    enc_i64(&b, (int64_t)st->cells);
    buf_puts(&b, "}\n");
    fwrite(b.p, 1, b.len, stdout);
    buf_free(&b);
}

/* ---- the command ------------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tally stats [options] SOURCE...\n"
            "\n"
            "Requests (count, errors, tokens, cost, latency mean/p50/p90/p99/max, ttft,\n"
            "time per output token, tok/s, energy, J per output token, degraded reasons)\n"
            "and training (steps, epochs, loss first/last/min, step time p50/p99, tok/s,\n"
            "errors), per group.\n"
            "\n"
            "SOURCE: a JSONL file (tally, toy/v1, TelemetryLogger tags), a directory of runs,\n"
            "'-' for stdin, a tally database or an OpenJarvis telemetry database\n"
            "(detected by content).  Several sources are merged.\n"
            "\n"
            "  --by KEYS        comma-separated keys (below)\n"
            "  --since WHEN     a duration back from now (30m, 24h, 7d) or an ISO-8601 time\n"
            "  --until WHEN     the same\n"
            "  --where K=V      keep events whose KEY is V (K!=V: is not); repeatable\n"
            "  --prices FILE    re-cost every request with this price file (docs/prices.md)\n"
            "  --json, --csv    machine-readable output (default: an aligned table)\n"
            "  --strict         fail on the first line that does not parse\n"
            "  --scan           read every row of a tally database, even when its\n"
            "                   per-minute rollup could answer (the answer is the same)\n"
            "  -h, --help       this text\n"
            "\n"
            "Percentiles come from a sketch within 1%% of the exact value (docs/stats.md).\n");
    char keys[512];
    key_list(keys, sizeof keys);
    fprintf(out, "\nKeys for --by and --where: %s (principal = principal_id).\n", keys);
}

static int parse_by(agg *a, const char *spec)
{
    const char *p = spec;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char tok[64];
        snprintf(tok, sizeof tok, "%.*s", (int)(len < sizeof tok ? len : sizeof tok - 1), p);
        p += len + (comma != NULL);
        if (!tok[0]) continue;
        int k = len < sizeof tok ? key_index(tok) : -1;
        if (k < 0) {
            char keys[512];
            key_list(keys, sizeof keys);
            cli_error("stats", "unknown --by key '%s' (keys: %s)", tok, keys);
            return -1;
        }
        if (a->nby >= MAX_BY) {
            cli_error("stats", "at most %d --by keys", MAX_BY);
            return -1;
        }
        a->by[a->nby++] = k;
    }
    return 0;
}

int cmd_stats(int argc, char **argv)
{
    agg a;
    memset(&a, 0, sizeof a);
    source_opts o = {0, 0, 0, NULL};
    int json = 0, csv = 0, scan = 0, rc = 0;
    char **srcs = calloc((size_t)argc + 1, sizeof *srcs);
    int ns = 0;
    const char *since = NULL, *until = NULL;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
            usage(stdout);
            free(srcs);
            return 0;
        } else if (!strcmp(s, "--json")) {
            json = 1;
        } else if (!strcmp(s, "--csv")) {
            csv = 1;
        } else if (!strcmp(s, "--strict")) {
            o.strict = 1;
        } else if (!strcmp(s, "--scan")) {
            scan = 1;
        } else if (!strcmp(s, "--prices")) {
            char perr[600];
            if (!val || a.reprice) {
                cli_error("stats", "--prices needs one price file");
                rc = 2;
                goto out;
            }
            if (prices_load(&a.prices, val, perr, sizeof perr) != 0) {
                cli_error("stats", "%s", perr);
                rc = 1;
                goto out;
            }
            a.reprice = 1;
            i++;
        } else if (!strcmp(s, "--by") || !strcmp(s, "--since") || !strcmp(s, "--until") || !strcmp(s, "--where")) {
            if (!val) {
                cli_error("stats", "%s needs a value", s);
                rc = 2;
                goto out;
            }
            i++;
            if (!strcmp(s, "--by")) {
                if (parse_by(&a, val)) { rc = 2; goto out; }
            } else if (!strcmp(s, "--since")) {
                since = val;
            } else if (!strcmp(s, "--until")) {
                until = val;
            } else {
                const char *eq = strchr(val, '=');
                if (!eq || eq == val || a.nw >= MAX_WHERE) {
                    cli_error("stats", "--where needs KEY=VALUE or KEY!=VALUE (got '%s')", val);
                    rc = 2;
                    goto out;
                }
                int neg = eq > val && eq[-1] == '!';
                char k[64];
                snprintf(k, sizeof k, "%.*s", (int)(eq - val - neg), val);
                int ki = key_index(k);
                if (ki < 0) {
                    cli_error("stats", "unknown --where key '%s'", k);
                    rc = 2;
                    goto out;
                }
                a.w[a.nw++] = (where){ki, neg, eq + 1, strlen(eq + 1)};
            }
        } else if (s[0] == '-' && s[1]) {
            cli_error("stats", "unknown option %s (try --help)", s);
            rc = 2;
            goto out;
        } else {
            srcs[ns++] = argv[i];
        }
    }
    if (json && csv) {
        cli_error("stats", "--json and --csv: choose one");
        rc = 2;
        goto out;
    }
    if (!ns) {
        cli_error("stats", "no SOURCE given (a file, directory, database or '-'; try --help)");
        rc = 2;
        goto out;
    }
    double now = (double)time(NULL);
    if (since && parse_when(since, now, &o.since)) {
        cli_error("stats", "--since: '%s' is neither a duration (30m, 24h, 7d) nor an ISO-8601 time", since);
        rc = 2;
        goto out;
    }
    if (until && parse_when(until, now, &o.until)) {
        cli_error("stats", "--until: '%s' is neither a duration (30m, 24h, 7d) nor an ISO-8601 time", until);
        rc = 2;
        goto out;
    }
    if (since && until && o.since > o.until) {
        cli_error("stats", "--since is later than --until");
        rc = 2;
        goto out;
    }
    source_stats st = {0};
    char err[600];
    /* A database's rollup answers when every key asked about is one of its
     * keys and costs are not recomputed (that needs each request). */
    int cells_ok = !scan && !a.reprice;
    for (int i = 0; i < a.nby; i++) cells_ok &= key_in_rollup(a.by[i]);
    for (int i = 0; i < a.nw; i++) cells_ok &= key_in_rollup(a.w[i].key);
    if (cells_ok) o.cells = on_cell;
    if (source_read_all(srcs, ns, &o, on_row, &a, &st, err, sizeof err)) {
        cli_error("stats", "%s", err);
        rc = 1;
        goto out;
    }
    if (a.too_many) {
        cli_error("stats", "more than %d groups: narrow --by or --where", MAX_GROUPS);
        rc = 1;
        goto out;
    }
    if (a.nomem) {
        cli_error("stats", "out of memory");
        rc = 1;
        goto out;
    }
    if (a.ng) qsort(a.g, a.ng, sizeof *a.g, cmp_group);
    if (json) {
        print_json(&a, &st);
    } else if (csv) {
        print_csv(&a);
    } else {
        print_table(&a, 0);
        print_table(&a, 1);
        if (isatty(STDOUT_FILENO) && (st.bad || st.torn))
            printf("(%llu lines skipped, %llu torn last lines)\n", (unsigned long long)st.bad,
                   (unsigned long long)st.torn);
        if (isatty(STDOUT_FILENO) && st.duplicates)
            printf("(%llu events found in more than one source, counted once)\n",
                   (unsigned long long)st.duplicates);
    }
out:
    for (size_t i = 0; i < a.ng; i++) {
        group *g = a.g[i];
        agg_cell_free(&g->c);
        free(g->key);
        free(g);
    }
    free(a.g);
    free(a.slot);
    prices_free(&a.prices);
    free(srcs);
    return rc;
}
