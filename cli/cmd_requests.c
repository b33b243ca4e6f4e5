/*
 * tally requests -- the individual requests behind a stats row: the
 * failures of a route, the 20 slowest, a principal's most expensive.
 *
 * Only N requests are kept while reading (a heap on the sort key), so a
 * file of any size is listed in bounded memory.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "source.h"
#include "stats.h"
#include "util.h"

#define MAX_N 1000000
#define SEEN_MAX 12

enum { S_TS, S_LATENCY, S_COST, S_TTFT };
static const char *const sort_names[] = {"ts", "latency", "cost", "ttft", NULL};

typedef struct item {
    double key, ts, latency_ms, ttft_ms, cost_usd;
    int64_t prompt, completion;
    int ok, has_cost, has_ttft, has_latency;
    char *request_id, *model, *engine, *route, *reason;
} item;

typedef struct seen {
    char *v[SEEN_MAX];
    int n, matched;
} seen;

typedef struct lister {
    where w[MAX_WHERE];
    int nw;
    seen seen[MAX_WHERE];
    int sort;
    size_t n, cap, alloc;
    item *heap;          /* min-heap on key: the root is the first to go */
    uint64_t matched, requests;
    int nomem;
} lister;

static char *dup_sv(sv v) { return v.p && v.n ? strndup(v.p, v.n) : NULL; }

static void item_free(item *it)
{
    free(it->request_id);
    free(it->model);
    free(it->engine);
    free(it->route);
    free(it->reason);
}

static void swap(item *a, item *b)
{
    item t = *a;
    *a = *b;
    *b = t;
}

static void sift_down(item *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l].key < h[m].key) m = l;
        if (r < n && h[r].key < h[m].key) m = r;
        if (m == i) return;
        swap(&h[i], &h[m]);
        i = m;
    }
}

static void sift_up(item *h, size_t i)
{
    while (i && h[(i - 1) / 2].key > h[i].key) {
        swap(&h[i], &h[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
}

/* Values seen for each --where key, for "no model 'x'; seen: ...". */
static void note_seen(lister *l, const row *e)
{
    char tmp[64];
    for (int i = 0; i < l->nw; i++) {
        seen *s = &l->seen[i];
        sv v = key_value(e, l->w[i].key, tmp, sizeof tmp);
        if (v.n == l->w[i].len && !memcmp(v.p, l->w[i].value, v.n)) s->matched = 1;
        if (s->n >= SEEN_MAX) continue;
        int have = 0;
        for (int k = 0; k < s->n && !have; k++) have = strlen(s->v[k]) == v.n && !memcmp(s->v[k], v.p, v.n);
        if (!have && (s->v[s->n] = strndup(v.p, v.n))) s->n++;
    }
}

static int on_request(void *ud, const row *e)
{
    lister *l = ud;
    if (!row_is_request(e)) return 0;
    l->requests++;
    note_seen(l, e);
    if (!where_pass(l->w, l->nw, e)) return 0;
    l->matched++;
    item it;
    memset(&it, 0, sizeof it);
    it.ts = (e->has & ROW_TS) ? e->ts : NAN;
    it.has_latency = (e->has & ROW_LATENCY) != 0;
    it.latency_ms = e->latency_us / 1e3;
    it.has_ttft = (e->has & ROW_TTFT) && e->ttft_us > 0;
    it.ttft_ms = e->ttft_us / 1e3;
    it.has_cost = (e->has & (ROW_COST | ROW_COST_USD)) != 0;
    it.cost_usd = (e->has & ROW_COST) ? (double)e->cost_nusd / 1e9 : e->cost_usd;
    it.prompt = e->prompt;
    it.completion = e->completion;
    it.ok = !(e->has & ROW_OK) || e->ok;
    double k = l->sort == S_TS ? it.ts : l->sort == S_LATENCY ? (it.has_latency ? it.latency_ms : NAN)
                                         : l->sort == S_COST  ? (it.has_cost ? it.cost_usd : NAN)
                                                              : (it.has_ttft ? it.ttft_ms : NAN);
    it.key = isnan(k) ? -INFINITY : k;
    item *slot;
    if (l->n < l->cap) {
        if (l->n == l->alloc) {
            size_t na = l->alloc ? l->alloc * 2 : 64;
            if (na > l->cap) na = l->cap;
            item *nh = realloc(l->heap, na * sizeof *nh);
            if (!nh) {
                l->nomem = 1;
                return 1;
            }
            l->heap = nh;
            l->alloc = na;
        }
        slot = &l->heap[l->n++];
    } else {
        if (it.key <= l->heap[0].key) return 0; /* not among the N */
        item_free(&l->heap[0]);
        slot = &l->heap[0];
    }
    *slot = it;
    slot->request_id = dup_sv(e->request_id);
    slot->model = dup_sv(e->model);
    slot->engine = dup_sv(e->engine);
    slot->route = dup_sv(e->route);
    slot->reason = dup_sv(!it.ok && e->error.n ? e->error : e->degraded);
    if (slot == &l->heap[0] && l->n == l->cap) sift_down(l->heap, l->n, 0);
    else sift_up(l->heap, l->n - 1);
    return 0;
}

static int cmp_key_desc(const void *a, const void *b)
{
    double x = ((const item *)a)->key, y = ((const item *)b)->key;
    return x > y ? -1 : x < y;
}

static const char *or_dash(const char *s) { return s && *s ? s : "-"; }

static void fmt_time(double ts, char *out, size_t n)
{
    if (isnan(ts)) {
        snprintf(out, n, "-");
        return;
    }
    time_t t = (time_t)ts;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tally requests [options] SOURCE...\n"
            "\n"
            "The requests behind a stats row, one line each: time (UTC), request_id,\n"
            "model, engine, route, prompt/completion tokens, latency, time to first\n"
            "token, cost, outcome and the error or degraded reason.  SOURCE as for\n"
            "tally stats.\n"
            "\n"
            "  --where K=V      keep requests whose KEY is V (K!=V: is not); repeatable;\n"
            "                   keys as for tally stats; ok=false and ok=0 are the same\n"
            "  --since WHEN     a duration back from now (30m, 24h, 7d) or an ISO-8601 time\n"
            "  --until WHEN     the same\n"
            "  --sort KEY       ts (default: the latest N, oldest first), latency, cost,\n"
            "                   ttft (the largest N, largest first)\n"
            "  -n N             how many (default 20; 0 = every one, at most %d)\n"
            "  --json, --csv    machine-readable output\n"
            THREADS_HELP
            "  -h, --help       this text\n",
            MAX_N);
}

int cmd_requests(int argc, char **argv)
{
    lister l;
    memset(&l, 0, sizeof l);
    const char *since = NULL, *until = NULL;
    long n = 20;
    int fmt = 0, ns = 0, rc = 0, threads = 0;
    char **srcs = calloc((size_t)argc + 1, sizeof *srcs);
    if (!srcs) return 1;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
            usage(stdout);
            goto out;
        } else if (!strcmp(s, "--json") || !strcmp(s, "--csv")) {
            fmt = s[2] == 'j' ? 1 : 2;
        } else if (!strcmp(s, "--threads")) {
            if (cli_threads("requests", val, &threads)) {
                rc = 2;
                goto out;
            }
            i++;
        } else if (!strcmp(s, "--where") || !strcmp(s, "--since") || !strcmp(s, "--until") || !strcmp(s, "--sort") ||
                   !strcmp(s, "-n")) {
            if (!val) {
                cli_error("requests", "%s needs a value", s);
                rc = 2;
                goto out;
            }
            i++;
            if (!strcmp(s, "--where")) {
                if (where_parse(l.w, &l.nw, val, "requests")) {
                    rc = 2;
                    goto out;
                }
            } else if (!strcmp(s, "--since")) {
                since = val;
            } else if (!strcmp(s, "--until")) {
                until = val;
            } else if (!strcmp(s, "--sort")) {
                l.sort = -1;
                for (int k = 0; sort_names[k]; k++)
                    if (!strcmp(val, sort_names[k])) l.sort = k;
                if (l.sort < 0) {
                    cli_error("requests", "--sort needs ts, latency, cost or ttft (got '%s')", val);
                    rc = 2;
                    goto out;
                }
            } else {
                char *end;
                n = strtol(val, &end, 10);
                if (*end || n < 0 || n > MAX_N) {
                    cli_error("requests", "-n needs a number from 0 to %d", MAX_N);
                    rc = 2;
                    goto out;
                }
            }
        } else if (s[0] == '-' && s[1]) {
            cli_error("requests", "unknown option %s (try --help)", s);
            rc = 2;
            goto out;
        } else {
            srcs[ns++] = argv[i];
        }
    }
    if (!ns) {
        cli_error("requests", "no SOURCE given (try --help)");
        rc = 2;
        goto out;
    }
    source_opts o = {0};
    o.threads = threads;
    double now = (double)time(NULL);
    if ((since && parse_when(since, now, &o.since)) || (until && parse_when(until, now, &o.until))) {
        cli_error("requests", "--since / --until: a duration (30m, 24h, 7d) or an ISO-8601 time");
        rc = 2;
        goto out;
    }
    l.cap = n ? (size_t)n : MAX_N;
    source_stats st = {0};
    char err[600];
    if (source_read_all(srcs, ns, &o, on_request, &l, &st, err, sizeof err) || l.nomem) {
        cli_error("requests", "%s", l.nomem ? "out of memory" : err);
        rc = 1;
        goto out;
    }
    if (!l.matched && l.nw && l.requests) {
        for (int i = 0; i < l.nw; i++) {
            if (l.w[i].neg || l.seen[i].matched) continue;
            fprintf(stderr, "tally requests: no %s '%s'; seen: ", key_name(l.w[i].key), l.w[i].value);
            for (int k = 0; k < l.seen[i].n; k++) fprintf(stderr, "%s%s", k ? ", " : "", l.seen[i].v[k]);
            fprintf(stderr, "%s\n", l.seen[i].n == SEEN_MAX ? ", ..." : "");
        }
    }
    if (l.n) qsort(l.heap, l.n, sizeof *l.heap, cmp_key_desc); /* no requests: no heap */
    if (l.sort == S_TS) /* the latest N, oldest first */
        for (size_t a = 0, b = l.n ? l.n - 1 : 0; a < b; a++, b--) swap(&l.heap[a], &l.heap[b]);
    if (fmt == 1) printf("{\"matched\":%llu,\"requests\":[", (unsigned long long)l.matched);
    else if (fmt == 2)
        printf("time,request_id,model,engine,route,prompt_tokens,completion_tokens,latency_ms,ttft_ms,cost_usd,"
               "outcome,reason\n");
    /* The table's text columns as wide as their longest value (at most 40). */
    int w[4] = {10, 5, 6, 5};
    for (size_t k = 0; k < l.n; k++) {
        const char *vals[4] = {l.heap[k].request_id, l.heap[k].model, l.heap[k].engine, l.heap[k].route};
        for (int c = 0; c < 4; c++) {
            int len = vals[c] ? (int)strlen(vals[c]) : 1;
            if (len > w[c]) w[c] = len < 40 ? len : 40;
        }
    }
    if (!fmt)
        printf("%-20s %-*s %-*s %-*s %-*s %13s %10s %9s %10s %-8s %s\n", "time", w[0], "request_id", w[1], "model", w[2],
               "engine", w[3], "route", "tokens_in/out", "latency_ms", "ttft_ms", "cost_usd", "outcome", "reason");
    for (size_t k = 0; k < l.n; k++) {
        const item *it = &l.heap[k];
        char t[32], lat[32] = "", ttft[32] = "", costs[32] = "";
        fmt_time(it->ts, t, sizeof t);
        if (it->has_latency) snprintf(lat, sizeof lat, "%.1f", it->latency_ms);
        if (it->has_ttft) snprintf(ttft, sizeof ttft, "%.1f", it->ttft_ms);
        if (it->has_cost) snprintf(costs, sizeof costs, "%.6g", it->cost_usd);
        const char *outcome = !it->ok ? "error" : it->reason ? "degraded" : "ok";
        if (fmt == 1) {
            printf("%s{\"time\":", k ? "," : "");
            cli_json_str(stdout, isnan(it->ts) ? NULL : t);
            const char *names[5] = {"request_id", "model", "engine", "route", NULL};
            const char *vals[4] = {it->request_id, it->model, it->engine, it->route};
            for (int c = 0; names[c]; c++) {
                printf(",\"%s\":", names[c]);
                cli_json_str(stdout, vals[c]);
            }
            printf(",\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"latency_ms\":%s,\"ttft_ms\":%s,"
                   "\"cost_usd\":%s,\"outcome\":\"%s\",\"reason\":",
                   (long long)it->prompt, (long long)it->completion, lat[0] ? lat : "null", ttft[0] ? ttft : "null",
                   costs[0] ? costs : "null", outcome);
            cli_json_str(stdout, it->reason);
            putchar('}');
        } else if (fmt == 2) {
            printf("%s,", isnan(it->ts) ? "" : t);
            const char *vals[4] = {it->request_id, it->model, it->engine, it->route};
            for (int c = 0; c < 4; c++) {
                cli_csv_field(stdout, vals[c] ? vals[c] : "");
                putchar(',');
            }
            printf("%lld,%lld,%s,%s,%s,%s,", (long long)it->prompt, (long long)it->completion, lat, ttft, costs,
                   outcome);
            cli_csv_field(stdout, it->reason ? it->reason : "");
            putchar('\n');
        } else {
            char tok[48];
            snprintf(tok, sizeof tok, "%lld/%lld", (long long)it->prompt, (long long)it->completion);
            char usd[48] = "-";
            /* one request's cost is small: micro-dollars shown */
            if (it->has_cost) snprintf(usd, sizeof usd, it->cost_usd < 1 ? "%.7f" : "%.4f", it->cost_usd);
            printf("%-20s %-*.40s %-*.40s %-*.40s %-*.40s %13s %10s %9s %10s %-8s %s\n", t, w[0], or_dash(it->request_id),
                   w[1], or_dash(it->model), w[2], or_dash(it->engine), w[3], or_dash(it->route), tok,
                   lat[0] ? lat : "-", ttft[0] ? ttft : "-", usd, outcome, or_dash(it->reason));
        }
    }
    if (fmt == 1) printf("]}\n");
    else if (!fmt && l.matched > l.n)
        printf("(%llu of %llu matching requests shown; -n to change)\n", (unsigned long long)l.n,
               (unsigned long long)l.matched);
out:
    for (size_t k = 0; k < l.n; k++) item_free(&l.heap[k]);
    free(l.heap);
    for (int i = 0; i < l.nw; i++)
        for (int k = 0; k < l.seen[i].n; k++) free(l.seen[i].v[k]);
    free(srcs);
    return rc;
}
