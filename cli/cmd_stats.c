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
#include "ch_cells.h"
#include "par.h"
#include "prices.h"
#include "stats.h"
#include "util.h"

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
            "(detected by content), or clickhouse://HOST:PORT/DATABASE (credentials from\n"
            "TALLY_CLICKHOUSE_USER, TALLY_CLICKHOUSE_PASSWORD[_FILE]).  Several sources\n"
            "are merged.\n"
            "\n"
            "  --by KEYS        comma-separated keys (below)\n"
            "  --since WHEN     a duration back from now (30m, 24h, 7d) or an ISO-8601 time\n"
            "  --until WHEN     the same\n"
            "  --where K=V      keep events whose KEY is V (K!=V: is not); repeatable\n"
            "  --prices FILE    re-cost every request with this price file (docs/prices.md)\n"
            "  --columns LIST   the table's columns, comma-separated (names as in the\n"
            "                   headings or in --csv), or all; by default the most asked-for\n"
            "                   ones that fit 120 characters, leaving out empty ones\n"
            "  --json, --csv    machine-readable output, every column (default: a table)\n"
            "  --strict         fail on the first line that does not parse\n"
            "  --scan           read every row of a tally database, even when its\n"
            "                   per-minute rollup could answer (the answer is the same)\n"
            THREADS_HELP
            "  -h, --help       this text\n"
            "\n"
            "Table headings carry their unit (p99_ms, cost_usd, j_per_tok: joules per output\n"
            "token); a cost ending in + leaves out requests without a price (unpriced).\n"
            "Percentiles come from a sketch within 1%% of the exact value (docs/stats.md).\n");
    char keys[512];
    key_list(keys, sizeof keys);
    fprintf(out, "\nKeys for --by and --where: %s (principal = principal_id).\n", keys);
}

int cmd_stats(int argc, char **argv)
{
    agg a;
    memset(&a, 0, sizeof a);
    source_opts o = {0};
    int json = 0, csv = 0, scan = 0, rc = 0;
    char **srcs = calloc((size_t)argc + 1, sizeof *srcs);
    int ns = 0;
    const char *since = NULL, *until = NULL, *columns = NULL;
    uint64_t colmask = 0;
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
        } else if (!strcmp(s, "--columns")) {
            if (!val || columns_parse(val, &colmask)) {
                if (!val) cli_error("stats", "--columns needs a list of columns, or all");
                rc = 2;
                goto out;
            }
            columns = val;
            i++;
        } else if (!strcmp(s, "--threads")) {
            if (cli_threads("stats", val, &o.threads)) {
                rc = 2;
                goto out;
            }
            i++;
        } else if (!strcmp(s, "--by") || !strcmp(s, "--since") || !strcmp(s, "--until") || !strcmp(s, "--where")) {
            if (!val) {
                cli_error("stats", "%s needs a value", s);
                rc = 2;
                goto out;
            }
            i++;
            if (!strcmp(s, "--by")) {
                if (by_parse(&a, val, "stats")) { rc = 2; goto out; }
            } else if (!strcmp(s, "--since")) {
                since = val;
            } else if (!strcmp(s, "--until")) {
                until = val;
            } else {
                if (where_parse(a.w, &a.nw, val, "stats")) {
                    rc = 2;
                    goto out;
                }
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
    int cells_ok = !scan && !a.reprice && keys_in_rollup(&a, a.w, a.nw);
    if (cells_ok) o.cells = on_cell;
    static const par_ops stats_par = {agg_fork, on_row, agg_join, NULL};
    o.par = &stats_par;
    /* ClickHouse answers the same question itself: grouped by these keys. */
    buf chw;
    buf_init(&chw, (size_t)1 << 16);
    if (cells_ok) {
        o.ch_pushdown = 1;
        for (int i = 0; i < a.nby && o.n_ch_keys < 16; i++) o.ch_keys[o.n_ch_keys++] = a.by[i];
        for (int i = 0; i < a.nw && o.n_ch_keys < 16; i++) o.ch_keys[o.n_ch_keys++] = a.w[i].key;
        ch_where_sql(a.w, a.nw, &chw);
        buf_putc(&chw, 0);
        if (!chw.failed) o.ch_where = chw.p;
    }
    int read_rc = source_read_all(srcs, ns, &o, on_row, &a, &st, err, sizeof err);
    buf_free(&chw);
    if (read_rc) {
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
        size_t nreq = print_table(&a, 0, columns ? &colmask : NULL, NULL);
        size_t ntrain = print_table(&a, 1, columns ? &colmask : NULL, nreq ? "\ntraining" : "training");
        if (!nreq && !ntrain) printf("no requests or training events%s\n", a.nw || since || until ? " match" : "");
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
    hindex_free(&a.idx);
    prices_free(&a.prices);
    free(srcs);
    return rc;
}
