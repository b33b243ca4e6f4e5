/*
 * tally runs -- one line per run: id, serve or train, model, started,
 * duration, requests or steps, final loss, reason, errors.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "source.h"
#include "util.h"

#define MAX_RUNS 100000

typedef struct run {
    char *id, *model, *reason, *phase;
    double first, last;
    uint64_t requests, steps, errors;
    double final_loss;
    int has_loss;
} run;

typedef struct runs {
    run *r;
    size_t n, cap;
    int too_many;
} runs;

static void set(char **dst, sv v)
{
    if (!v.p) return;
    free(*dst);
    *dst = strndup(v.p, v.n);
}

static run *find(runs *rs, sv id)
{
    /* Runs are few and arrive in order: search from the newest. */
    for (size_t i = rs->n; i-- > 0;)
        if (strlen(rs->r[i].id) == id.n && !memcmp(rs->r[i].id, id.p, id.n)) return &rs->r[i];
    if (rs->n >= MAX_RUNS) {
        rs->too_many = 1;
        return NULL;
    }
    if (rs->n == rs->cap) {
        size_t nc = rs->cap ? rs->cap * 2 : 32;
        run *nr = realloc(rs->r, nc * sizeof *nr);
        if (!nr) return NULL;
        rs->r = nr;
        rs->cap = nc;
    }
    run *r = &rs->r[rs->n++];
    memset(r, 0, sizeof *r);
    r->id = strndup(id.p, id.n);
    r->first = INFINITY;
    r->last = -INFINITY;
    return r;
}

static int on_event(void *ud, const row *e)
{
    runs *rs = ud;
    run *r = find(rs, e->run_id.p ? e->run_id : SV_LIT("-"));
    if (!r) return rs->too_many;
    if (e->has & ROW_TS) {
        if (e->ts < r->first) r->first = e->ts;
        if (e->ts > r->last) r->last = e->ts;
    }
    switch (agg_kind(e)) {
    case AGG_REQUEST:
        r->requests++;
        if ((e->has & ROW_OK) && !e->ok) r->errors++;
        if (!r->model) set(&r->model, e->model);
        break;
    case AGG_STEP:
        r->steps++;
        if (e->has & ROW_LOSS) {
            r->final_loss = e->loss;
            r->has_loss = 1;
        }
        break;
    case AGG_ERROR:
        if (!SV_IS(e->phase, "serve")) r->errors++;
        break;
    default:
        if (SV_IS(e->kind, "run_start")) {
            set(&r->model, e->run_model);
            set(&r->phase, e->phase);
        } else if (SV_IS(e->kind, "run_end")) {
            set(&r->reason, e->reason);
        }
    }
    return 0;
}

static const char *const sort_keys[] = {"id", "kind", "model", "started", "duration", "work", "final_loss",
                                        "reason", "errors", NULL};
static int sort_by;

static const char *kind_of(const run *r)
{
    if (r->phase && !strcmp(r->phase, "train")) return "train";
    if (r->phase && !strcmp(r->phase, "serve")) return "serve";
    return r->steps > r->requests ? "train" : "serve";
}

static double dur(const run *r) { return r->last >= r->first ? r->last - r->first : NAN; }

static int cmp_str(const char *a, const char *b) { return strcmp(a ? a : "", b ? b : ""); }

static int cmp_num(double a, double b)
{
    if (a != a) return b != b ? 0 : 1; /* missing last */
    if (b != b) return -1;
    return a < b ? -1 : a > b;
}

static int cmp_run(const void *pa, const void *pb)
{
    const run *a = pa, *b = pb;
    switch (sort_by) {
    case 0: return cmp_str(a->id, b->id);
    case 1: return cmp_str(kind_of(a), kind_of(b));
    case 2: return cmp_str(a->model, b->model);
    case 3: return cmp_num(a->first, b->first);
    case 4: return cmp_num(dur(a), dur(b));
    case 5: return cmp_num((double)(a->requests + a->steps), (double)(b->requests + b->steps));
    case 6: return cmp_num(a->has_loss ? a->final_loss : NAN, b->has_loss ? b->final_loss : NAN);
    case 7: return cmp_str(a->reason, b->reason);
    default: return cmp_num((double)a->errors, (double)b->errors);
    }
}

/* A run's start (ISO-8601 UTC) and duration in seconds; left as they are
 * when the run has no time. */
static void run_times(const run *r, char *started, size_t sn, char *d, size_t dn, int decimals)
{
    if (!isfinite(r->first)) return;
    time_t t = (time_t)r->first;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(started, sn, "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(d, dn, "%.*f", decimals, dur(r));
}

/* --json / --csv: every column, absent values null (JSON) or empty (CSV). */
static void print_machine(const runs *rs, int desc, int json)
{
    static const char *const cols[] = {"run", "kind", "model", "started", "duration_s", "requests", "steps",
                                       "final_loss", "reason", "errors"};
    if (json) fputs("{\"runs\":[", stdout);
    else
        for (size_t c = 0; c < 10; c++) printf("%s%s", c ? "," : "", cols[c]);
    if (!json) putchar('\n');
    for (size_t k = 0; k < rs->n; k++) {
        const run *r = &rs->r[desc ? rs->n - 1 - k : k];
        char started[32] = "", d[32] = "", loss[32] = "";
        run_times(r, started, sizeof started, d, sizeof d, 3);
        if (r->has_loss && isfinite(r->final_loss)) snprintf(loss, sizeof loss, "%.17g", r->final_loss);
        const char *sv_[4] = {r->id, kind_of(r), r->model, r->reason};
        if (json) {
            printf("%s{\"run\":", k ? "," : "");
            cli_json_str(stdout, sv_[0]);
            fputs(",\"kind\":", stdout);
            cli_json_str(stdout, sv_[1]);
            fputs(",\"model\":", stdout);
            cli_json_str(stdout, sv_[2]);
            fputs(",\"started\":", stdout);
            cli_json_str(stdout, started[0] ? started : NULL);
            printf(",\"duration_s\":%s,\"requests\":%llu,\"steps\":%llu,\"final_loss\":%s,\"reason\":",
                   d[0] ? d : "null", (unsigned long long)r->requests, (unsigned long long)r->steps,
                   loss[0] ? loss : "null");
            cli_json_str(stdout, sv_[3]);
            printf(",\"errors\":%llu}", (unsigned long long)r->errors);
        } else {
            cli_csv_field(stdout, sv_[0]);
            putchar(',');
            cli_csv_field(stdout, sv_[1]);
            putchar(',');
            cli_csv_field(stdout, sv_[2] ? sv_[2] : "");
            printf(",%s,%s,%llu,%llu,%s,", started, d, (unsigned long long)r->requests, (unsigned long long)r->steps,
                   loss);
            cli_csv_field(stdout, sv_[3] ? sv_[3] : "");
            printf(",%llu\n", (unsigned long long)r->errors);
        }
    }
    if (json) fputs("]}\n", stdout);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tally runs [--sort COLUMN] [--desc] [--json|--csv] SOURCE...\n"
            "\n"
            "One line per run: id, kind (serve/train), model, started (UTC), duration,\n"
            "requests or steps, final loss, reason, errors.  SOURCE as for tally stats\n"
            "(a runs directory, JSONL files, a tally database).\n"
            "\n"
            "  --sort COLUMN   id, kind, model, started (default), duration, work,\n"
            "                  final_loss, reason, errors\n"
            "  --desc          largest first\n"
            "  --json, --csv   machine-readable output: run, kind, model, started,\n"
            "                  duration_s, requests, steps, final_loss, reason, errors\n"
            "                  (absent values are null / empty)\n"
            "  --threads N     read JSONL with N threads (default: every core; 1: one)\n");
}

int cmd_runs(int argc, char **argv)
{
    char **srcs = calloc((size_t)argc + 1, sizeof *srcs);
    int ns = 0, desc = 0, rc = 0, fmt = 0, threads = 0; /* fmt: 0 table, 1 json, 2 csv */
    sort_by = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            free(srcs);
            return 0;
        } else if (!strcmp(argv[i], "--sort")) {
            int k = -1;
            for (int j = 0; i + 1 < argc && sort_keys[j]; j++)
                if (!strcmp(argv[i + 1], sort_keys[j])) k = j;
            if (k < 0) {
                cli_error("runs", "--sort needs one of id, kind, model, started, duration, work, final_loss, "
                                  "reason, errors");
                free(srcs);
                return 2;
            }
            sort_by = k;
            i++;
        } else if (!strcmp(argv[i], "--threads")) {
            if (cli_threads("runs", i + 1 < argc ? argv[i + 1] : NULL, &threads)) {
                free(srcs);
                return 2;
            }
            i++;
        } else if (!strcmp(argv[i], "--desc")) {
            desc = 1;
        } else if (!strcmp(argv[i], "--json") || !strcmp(argv[i], "--csv")) {
            fmt = argv[i][2] == 'j' ? 1 : 2;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            cli_error("runs", "unknown option %s (try --help)", argv[i]);
            free(srcs);
            return 2;
        } else {
            srcs[ns++] = argv[i];
        }
    }
    if (!ns) {
        cli_error("runs", "no SOURCE given (try --help)");
        free(srcs);
        return 2;
    }
    runs rs = {0};
    source_opts o = {0};
    o.threads = threads;
    source_stats st = {0};
    char err[600];
    if (source_read_all(srcs, ns, &o, on_event, &rs, &st, err, sizeof err)) {
        cli_error("runs", "%s", err);
        rc = 1;
    } else {
        if (rs.n) qsort(rs.r, rs.n, sizeof *rs.r, cmp_run);
        if (fmt) {
            print_machine(&rs, desc, fmt == 1);
            goto done;
        }
        printf("%-28s %-5s %-18s %-20s %10s %9s %10s %-11s %6s\n", "run", "kind", "model", "started", "duration_s",
               "work", "final_loss", "reason", "errors");
        for (size_t k = 0; k < rs.n; k++) {
            const run *r = &rs.r[desc ? rs.n - 1 - k : k];
            char started[32] = "-", loss[32] = "-", d[32] = "-", work[32];
            run_times(r, started, sizeof started, d, sizeof d, 1);
            if (r->has_loss) snprintf(loss, sizeof loss, "%.4g", r->final_loss);
            int train = !strcmp(kind_of(r), "train");
            snprintf(work, sizeof work, "%llu%s", (unsigned long long)(train ? r->steps : r->requests),
                     train ? "st" : "rq");
            printf("%-28s %-5s %-18s %-20s %10s %9s %10s %-11s %6llu\n", r->id, kind_of(r), r->model ? r->model : "-",
                   started, d, work, loss, r->reason ? r->reason : "(open)", (unsigned long long)r->errors);
        }
    }
done:
    for (size_t k = 0; k < rs.n; k++) {
        free(rs.r[k].id);
        free(rs.r[k].model);
        free(rs.r[k].reason);
        free(rs.r[k].phase);
    }
    free(rs.r);
    free(srcs);
    return rc;
}
