/* stats_output -- the column table and the outputs drawn from it (see stats.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "encode.h"
#include "stats.h"
#include "util.h"

enum { F_INT, F_NUM, F_USD, F_MS, F_PCT, F_STR };

/* How the table treats a column by default: `prio` 0 = only when asked
 * for with --columns; otherwise columns are dropped from the widest-first
 * table in decreasing `prio` until it fits TABLE_WIDTH.  Every column is
 * left out when it is empty for every group (`-`), and a ZERO column also
 * when it is 0 for every group. */
enum { KEEP = 0, ZERO = 1 };
#define TABLE_WIDTH 120

typedef struct column {
    const char *name;        /* csv / json name */
    const char *head;        /* table heading, with its unit */
    int fmt, training, prio, hide;
} column;

static const column cols[] = {
    {"requests", "reqs", F_INT, 0, 1, KEEP},
    {"errors", "errors", F_INT, 0, 0, KEEP},
    {"error_rate", "err_pct", F_PCT, 0, 2, KEEP},
    {"prompt_tokens", "prompt_tok", F_INT, 0, 5, KEEP},
    {"cached_tokens", "cached_tok", F_INT, 0, 15, ZERO},
    {"cache_write_tokens", "cache_wr_tok", F_INT, 0, 0, ZERO},
    {"completion_tokens", "compl_tok", F_INT, 0, 6, KEEP},
    {"reasoning_tokens", "reason_tok", F_INT, 0, 0, ZERO},
    {"total_tokens", "total_tok", F_INT, 0, 0, KEEP},
    {"cost_usd", "cost_usd", F_USD, 0, 3, KEEP},
    {"unpriced", "unpriced", F_INT, 0, 4, ZERO},
    {"latency_total_s", "lat_total_s", F_NUM, 0, 0, KEEP},
    {"latency_mean_ms", "mean_ms", F_MS, 0, 14, KEEP},
    {"latency_p50_ms", "p50_ms", F_MS, 0, 7, KEEP},
    {"latency_p90_ms", "p90_ms", F_MS, 0, 12, KEEP},
    {"latency_p99_ms", "p99_ms", F_MS, 0, 8, KEEP},
    {"latency_max_ms", "max_ms", F_MS, 0, 16, KEEP},
    {"ttft_avg_ms", "ttft_avg_ms", F_MS, 0, 0, KEEP},
    {"ttft_requests", "ttft_reqs", F_INT, 0, 0, ZERO},
    {"ttft_p50_ms", "ttft_p50_ms", F_MS, 0, 9, KEEP},
    {"ttft_p90_ms", "ttft_p90_ms", F_MS, 0, 0, KEEP},
    {"ttft_p99_ms", "ttft_p99_ms", F_MS, 0, 17, KEEP},
    {"tpot_p50_ms", "tpot_p50_ms", F_MS, 0, 13, KEEP},
    {"throughput_tok_s", "tok_s", F_NUM, 0, 11, KEEP},
    {"energy_j", "energy_j", F_NUM, 0, 18, KEEP},
    {"j_per_output_token", "j_per_tok", F_NUM, 0, 10, KEEP},
    {"gpu_util_avg_pct", "gpu_pct", F_NUM, 0, 19, KEEP},
    {"degraded_requests", "degraded", F_INT, 0, 10, ZERO},
    {"degraded", "reasons", F_STR, 0, 20, KEEP},
    {"steps", "steps", F_INT, 1, 1, KEEP},
    {"epochs", "epochs", F_INT, 1, 2, ZERO},
    {"loss_first", "loss_first", F_NUM, 1, 5, KEEP},
    {"loss_last", "loss_last", F_NUM, 1, 3, KEEP},
    {"loss_min", "loss_min", F_NUM, 1, 4, KEEP},
    {"loss_nonfinite", "nan_loss", F_INT, 1, 6, ZERO},
    {"step_p50_ms", "step_p50_ms", F_MS, 1, 7, KEEP},
    {"step_p99_ms", "step_p99_ms", F_MS, 1, 9, KEEP},
    {"train_tokens_per_s", "tok_s", F_NUM, 1, 8, KEEP},
    {"evals", "evals", F_INT, 1, 0, ZERO},
    {"val_loss_first", "val_first", F_NUM, 1, 11, KEEP},
    {"val_loss_last", "val_last", F_NUM, 1, 10, KEEP},
    {"val_loss_best", "val_best", F_NUM, 1, 10, KEEP},
    {"error_events", "errors", F_INT, 1, 6, ZERO},
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
    if (IS("ttft_requests")) return (double)g->ttft_n;
    if (IS("ttft_p50_ms")) return sketch_quantile(&g->ttft, 0.50) / 1e3;
    if (IS("ttft_p90_ms")) return sketch_quantile(&g->ttft, 0.90) / 1e3;
    if (IS("ttft_p99_ms")) return sketch_quantile(&g->ttft, 0.99) / 1e3;
    if (IS("tpot_p50_ms")) return sketch_quantile(&g->tpot, 0.50) / 1e3;
    if (IS("throughput_tok_s")) return ratio(g->tput_sum, (double)g->tput_n);
    if (IS("energy_j")) return g->energy_n ? g->energy_j : NAN;
    if (IS("j_per_output_token")) return g->energy_n ? ratio(g->energy_j, g->energy_completion) : NAN;
    if (IS("gpu_util_avg_pct")) return ratio(g->gpu_sum, (double)g->gpu_n);
    if (IS("degraded_requests")) {
        uint64_t cnt = g->degraded_other;
        for (int i = 0; i < AGG_MAX_DEGRADED && g->degraded[i]; i++) cnt += g->degraded_n[i];
        return (double)cnt;
    }
    if (IS("evals")) return (double)g->evals;
    if (IS("val_loss_first")) return g->evals ? g->eval.first : NAN;
    if (IS("val_loss_last")) return g->evals ? g->eval.last : NAN;
    if (IS("val_loss_best")) return g->evals ? g->eval.min : NAN;
    if (IS("steps")) return (double)g->steps;
    if (IS("epochs")) return (double)g->epochs;
    if (IS("loss_first")) return g->has_loss ? g->loss.first : NAN;
    if (IS("loss_last")) return g->has_loss ? g->loss.last : NAN;
    if (IS("loss_min")) return g->has_loss ? g->loss.min : NAN;
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
    case F_USD:
        if (!human) {
            snprintf(out, n, "%.9f", v);
            break;
        }
        /* `+`: some of the group's requests have no price. */
        cli_fmt_usd(v, g->unpriced != 0, out, n);
        break;
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

int cmp_group(const void *a, const void *b)
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

static int has_section(const agg_cell *g, int training)
{
    return training ? (g->steps || g->epochs || g->evals || (g->error_events && !g->requests)) : g->requests != 0;
}

int columns_parse(const char *list, uint64_t *mask)
{
    _Static_assert(NCOLS <= 64, "a column mask is 64 bits");
    *mask = 0;
    if (!strcmp(list, "all")) {
        *mask = NCOLS == 64 ? ~(uint64_t)0 : (((uint64_t)1 << NCOLS) - 1);
        return 0;
    }
    const char *p = list;
    char tok[LIST_ITEM_MAX];
    int fits;
    while ((fits = list_next(&p, tok)) >= 0) {
        int found = !tok[0] || (fits && key_index(tok) >= 0); /* a --by key: always shown */
        for (size_t c = 0; c < NCOLS && fits; c++)
            if (!strcmp(cols[c].name, tok) || !strcmp(cols[c].head, tok)) {
                *mask |= (uint64_t)1 << c;
                found = 1;
            }
        if (!found) {
            char names[2048];
            size_t k = 0;
            for (size_t c = 0; c < NCOLS && k < sizeof names; c++)
                k += (size_t)snprintf(names + k, sizeof names - k, "%s%s", c ? ", " : "", cols[c].head);
            cli_error("stats", "unknown column '%s' (columns: %s, or all)", tok, names);
            return -1;
        }
    }
    return *mask ? 0 : -1;
}

/* Empty for every row: `-` everywhere, or 0 everywhere for a ZERO column. */
static int column_empty(char (*cells)[256], size_t nrows, size_t ncell, size_t j, int hide)
{
    for (size_t i = 1; i < nrows; i++) {
        const char *v = cells[i * ncell + j];
        if (strcmp(v, "-") && !(hide == ZERO && !strcmp(v, "0"))) return 0;
    }
    return 1;
}

size_t print_table(agg *a, int training, const uint64_t *chosen, const char *heading)
{
    int escape_ctl = isatty(STDOUT_FILENO) || getenv("TALLY_ESCAPE_CONTROLS");
    int nkeys = a->nby ? a->nby : 1;
    size_t sel[NCOLS], ns = 0;
    for (size_t c = 0; c < NCOLS; c++)
        if (cols[c].training == training && (chosen ? (*chosen >> c) & 1 : cols[c].prio > 0)) sel[ns++] = c;
    size_t nrows = 0;
    for (size_t i = 0; i < a->ng; i++) nrows += has_section(&a->g[i]->c, training);
    if (!nrows || !ns) return 0;
    size_t ncell = (size_t)nkeys + ns;
    char (*cells)[256] = calloc((nrows + 1) * ncell, 256);
    size_t *w = calloc(ncell, sizeof *w);
    int *shown = calloc(ncell, sizeof *shown);
    if (!cells || !w || !shown) {
        free(cells);
        free(w);
        free(shown);
        cli_error("stats", "out of memory");
        return 0;
    }
    for (int k = 0; k < nkeys; k++) snprintf(cells[k], 256, "%s", a->nby ? key_name(a->by[k]) : "group");
    for (size_t j = 0; j < ns; j++) snprintf(cells[nkeys + j], 256, "%s", cols[sel[j]].head);
    size_t r = 1;
    for (size_t i = 0; i < a->ng; i++) {
        const agg_cell *g = &a->g[i]->c;
        if (!has_section(g, training)) continue;
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
    /* What is shown: the keys, and the chosen columns; by default without
     * the empty ones, then the least asked-for dropped until it fits. */
    size_t width = 0, last = 0;
    for (size_t j = 0; j < ncell; j++) {
        shown[j] = j < (size_t)nkeys || chosen || !column_empty(cells, r, ncell, j, cols[sel[j - nkeys]].hide);
        if (shown[j]) width += w[j] + 2;
    }
    while (!chosen && width > TABLE_WIDTH + 2) {
        size_t drop = 0;
        int worst = 0;
        for (size_t j = (size_t)nkeys; j < ncell; j++)
            if (shown[j] && cols[sel[j - nkeys]].prio > worst && cols[sel[j - nkeys]].prio > 2) {
                worst = cols[sel[j - nkeys]].prio;
                drop = j;
            }
        if (!worst) break;
        shown[drop] = 0;
        width -= w[drop] + 2;
    }
    for (size_t j = 0; j < ncell; j++)
        if (shown[j]) last = j;
    if (heading) printf("%s\n", heading);
    for (size_t i = 0; i < r; i++) {
        for (size_t j = 0; j < ncell; j++) {
            if (!shown[j]) continue;
            const char *s = cells[i * ncell + j];
            /* keys left-aligned, numbers right-aligned, the last column as is */
            if (j < (size_t)nkeys) printf("%-*s", (int)w[j], s);
            else if (j == last && cols[sel[j - nkeys]].fmt == F_STR) printf("%s", s);
            else printf("%*s", (int)w[j], s);
            if (j < last) printf("  ");
        }
        printf("\n");
    }
    free(cells);
    free(w);
    free(shown);
    return nrows;
}

static void csv_field(const char *s) { cli_csv_field(stdout, s); }

void print_csv(agg *a)
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

void print_json(agg *a, const source_stats *st)
{
    buf b;
    buf_init(&b, (size_t)1 << 30);
    stats_json(a, st, &b);
    buf_putc(&b, '\n');
    fwrite(b.p, 1, b.len, stdout);
    buf_free(&b);
}

void stats_json(agg *a, const source_stats *st, buf *out)
{
    int nkeys = a->nby ? a->nby : 1;
    buf_puts(out, "{\"groups\":[");
    for (size_t i = 0; i < a->ng; i++) {
        const agg_cell *g = &a->g[i]->c;
        char parts[MAX_BY][256];
        split_key(a->g[i]->key, parts, nkeys);
        buf_puts(out, i ? ",{" : "{");
        for (int k = 0; k < nkeys; k++) {
            if (k) buf_putc(out, ',');
            enc_cstr(out, a->nby ? key_name(a->by[k]) : "group");
            buf_putc(out, ':');
            enc_cstr(out, parts[k]);
        }
        for (size_t c = 0; c < NCOLS; c++) {
            buf_putc(out, ',');
            enc_cstr(out, cols[c].name);
            buf_putc(out, ':');
            if (cols[c].fmt == F_STR) {
                buf_putc(out, '{');
                for (int d = 0; d < AGG_MAX_DEGRADED && g->degraded[d]; d++) {
                    if (d) buf_putc(out, ',');
                    enc_cstr(out, g->degraded[d]);
                    buf_putc(out, ':');
                    enc_i64(out, (int64_t)g->degraded_n[d]);
                }
                if (g->degraded_other) {
                    buf_puts(out, g->degraded[0] ? ",\"other\":" : "\"other\":");
                    enc_i64(out, (int64_t)g->degraded_other);
                }
                buf_putc(out, '}');
            } else {
                enc_double(out, col_value(g, c));
            }
        }
        buf_putc(out, '}');
    }
    buf_putc(out, ']');
    enc_member_i64(out, "events", (int64_t)st->events);
    enc_member_i64(out, "skipped_lines", (int64_t)st->bad);
    enc_member_i64(out, "torn_lines", (int64_t)st->torn);
    enc_member_i64(out, "duplicates", (int64_t)st->duplicates);
    enc_member_i64(out, "rollup_cells", (int64_t)st->cells);
    buf_putc(out, '}');
}
