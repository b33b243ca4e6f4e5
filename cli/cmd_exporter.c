/*
 * tally exporter -- /metrics and OTLP for programs that only write files.
 *
 * Follows JSONL files and run directories (as tail -f: across truncation
 * and rotation; new runs in a directory are picked up) and keeps the same
 * metrics table the library keeps (src/metrics.c), served at /metrics and,
 * with --otlp, sent with the events as spans to an OTLP/HTTP collector.
 *
 * Restarting it double-counts nothing: the metrics are rebuilt from the
 * files at every start (each line counted once, whatever happened
 * before), and spans are sent only past the position kept in the --state
 * file (without one: only for lines appended after the start).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "follow.h"
#include "json.h"
#include "metrics.h"
#include "otlp.h"
#include "row.h"
#include "source.h"
#include "util.h"

#define MAX_FILES 4096

static volatile sig_atomic_t stop_flag;

static int64_t clock_ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

typedef struct watched {
    char *path;
    follower fw;
    row_ctx ctx;
    char run_id[256];
    off_t send_from;      /* spans for lines starting here or later */
} watched;

typedef struct exporter {
    metrics *m;
    otlp_exporter *otlp;
    json_arena a;
    watched *files;
    size_t n;
    uint64_t lines, bad, spans;
} exporter;

typedef struct state_entry {
    char path[4096];
    unsigned long long dev, ino, off;
} state_entry;

static void log_stderr(void *ud, int level, const char *msg)
{
    (void)ud;
    fprintf(stderr, "tally exporter: %s%s\n", level == TALLY_LOG_ERROR ? "error: " : "", msg);
}

/* The --state file: one "dev ino offset path" line per file. */
static state_entry *read_state(const char *path, size_t *n)
{
    *n = 0;
    if (!path) return NULL;
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    state_entry *e = NULL;
    size_t cap = 0;
    char line[4200];
    while (*n < MAX_FILES && fgets(line, sizeof line, f)) {
        if (*n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            state_entry *ne = realloc(e, nc * sizeof *ne);
            if (!ne) break; /* what was read so far still counts */
            e = ne;
            cap = nc;
        }
        state_entry *s = &e[*n];
        int used = 0;
        if (sscanf(line, "%llu %llu %llu %n", &s->dev, &s->ino, &s->off, &used) == 3 && used > 0) {
            size_t l = strcspn(line + used, "\n");
            if (l < sizeof s->path) {
                memcpy(s->path, line + used, l);
                s->path[l] = 0;
                (*n)++;
            }
        }
    }
    fclose(f);
    return e;
}

static int write_state(const char *path, const exporter *x)
{
    if (!path) return 0;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    for (size_t i = 0; i < x->n; i++) {
        const watched *w = &x->files[i];
        if (!w->fw.f) continue;
        /* what has been handed to the exporter: every whole line read */
        fprintf(f, "%llu %llu %llu %s\n", (unsigned long long)w->fw.dev, (unsigned long long)w->fw.ino,
                (unsigned long long)w->fw.line_at, w->path);
    }
    int rc = fclose(f) == 0 ? rename(tmp, path) : -1;
    if (rc) unlink(tmp);
    return rc;
}

/* Lines reach here through one of these per file. */
typedef struct line_ctx {
    exporter *x;
    watched *w;
} line_ctx;

static void handle_line(void *ud, const char *line, size_t len, off_t at)
{
    line_ctx *c = ud;
    exporter *x = c->x;
    watched *w = c->w;
    json_arena_reset(&x->a);
    json_error je;
    jv *v = json_parse(&x->a, line, len, &je);
    row r;
    if (!v || v->type != JV_OBJ || !row_from_json(v, &w->ctx, &r)) {
        x->bad++;
        return;
    }
    x->lines++;
    metrics_observe(x->m, &r);
    if (!x->otlp || at < w->send_from) return;
    char id[64];
    if (r.id.n && r.id.n < sizeof id) {
        memcpy(id, r.id.p, r.id.n);
        id[r.id.n] = 0;
    } else {
        /* a producer that writes no ids: the one `tally import` gives */
        hash_id(w->run_id, strlen(w->run_id), (uint64_t)at, line, len, id);
    }
    int64_t ts_us = (r.has & ROW_TS) ? (int64_t)llround(r.ts * 1e6) : clock_ns(CLOCK_REALTIME) / 1000;
    if (otlp_exporter_add(x->otlp, id, ts_us, NULL, 0, &r) == 0) x->spans++;
}

static void add_file(exporter *x, const char *path, const state_entry *st, size_t nst, int fresh_start, int have_state)
{
    for (size_t i = 0; i < x->n; i++)
        if (!strcmp(x->files[i].path, path)) return;
    if (x->n == MAX_FILES) return;
    watched *w = &x->files[x->n];
    memset(w, 0, sizeof *w);
    w->path = strdup(path);
    if (!w->path || follow_open(&w->fw, path, 0, SOURCE_MAX_LINE) != 0) {
        free(w->path);
        return;
    }
    run_id_from_path(path, w->run_id, sizeof w->run_id);
    row_ctx_init(&w->ctx, w->run_id);
    struct stat s;
    fstat(fileno(w->fw.f), &s);
    if (!fresh_start) {
        w->send_from = 0;                  /* a file that appeared while running: all of it is new */
    } else if (have_state) {
        w->send_from = 0;                  /* not in the state: never sent */
        for (size_t i = 0; i < nst; i++)
            if (!strcmp(st[i].path, path) && st[i].ino == (unsigned long long)s.st_ino &&
                st[i].dev == (unsigned long long)s.st_dev && st[i].off <= (unsigned long long)s.st_size)
                w->send_from = (off_t)st[i].off;
    } else {
        w->send_from = s.st_size;          /* no state: history is not re-sent */
    }
    x->n++;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tally exporter [options] SOURCE...\n"
            "\n"
            "Follows JSONL files and run directories (as tail -f, across truncation and\n"
            "rotation; new runs in a directory are picked up) and serves the metrics\n"
            "libtally serves at /metrics (docs/metrics.md); with --otlp, also sends the\n"
            "events as spans and the metrics to an OTLP/HTTP collector (docs/otlp.md).\n"
            "For programs that write toy/v1 or tally JSONL without linking libtally.\n"
            "\n"
            "  --listen ADDR    serve /metrics on ADDR (default 127.0.0.1:9464; ':PORT'\n"
            "                   is 127.0.0.1, never every interface unless asked)\n"
            "  --otlp URL       OTLP/HTTP collector (http://127.0.0.1:4318); headers from\n"
            "                   OTEL_EXPORTER_OTLP_HEADERS, never from the command line\n"
            "  --spool DIR      where batches wait while the collector is away\n"
            "  --state FILE     how far spans were sent, so that a restart re-sends\n"
            "                   nothing (without it, spans start with lines appended\n"
            "                   after the start)\n"
            "  --series-cap N   series per metric family (default 500)\n"
            "  --once           read what is there, print the metrics (and send), exit\n"
            "  -h, --help       this text\n"
            "\n"
            "Metrics are rebuilt from the files at every start, so a restart counts\n"
            "each line once.\n");
}

int cmd_exporter(int argc, char **argv)
{
    const char *listen = "127.0.0.1:9464", *otlp_url = NULL, *spool = NULL, *state = NULL;
    long cap = 0;
    int once = 0;
    char **srcs = calloc((size_t)argc, sizeof *srcs);
    int nsrc = 0;
    if (!srcs) return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = !strcmp(a, "--listen") || !strcmp(a, "--otlp") || !strcmp(a, "--spool") || !strcmp(a, "--state") ||
                    !strcmp(a, "--series-cap");
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            free(srcs);
            return 0;
        } else if (!strcmp(a, "--once")) {
            once = 1;
        } else if (takes) {
            if (!val) {
                cli_error("exporter", "%s needs a value", a);
                free(srcs);
                return 2;
            }
            i++;
            if (!strcmp(a, "--listen")) listen = val;
            else if (!strcmp(a, "--otlp")) otlp_url = val;
            else if (!strcmp(a, "--spool")) spool = val;
            else if (!strcmp(a, "--state")) state = val;
            else {
                char *end;
                cap = strtol(val, &end, 10);
                if (*end || cap < 1 || cap > 100000) {
                    cli_error("exporter", "--series-cap needs a number from 1 to 100000");
                    free(srcs);
                    return 2;
                }
            }
        } else if (a[0] == '-' && a[1]) {
            cli_error("exporter", "unknown option %s (try --help)", argv[i]);
            free(srcs);
            return 2;
        } else {
            srcs[nsrc++] = argv[i];
        }
    }
    if (!nsrc) {
        cli_error("exporter", "no SOURCE given (try --help)");
        free(srcs);
        return 2;
    }
    if (otlp_url && strncmp(otlp_url, "http://", 7) && strncmp(otlp_url, "https://", 8)) {
        cli_error("exporter", "--otlp needs an http:// or https:// URL");
        free(srcs);
        return 2;
    }

    exporter x;
    memset(&x, 0, sizeof x);
    x.m = metrics_new(0, (uint32_t)cap);
    x.files = calloc(MAX_FILES, sizeof *x.files);
    if (!x.m || !x.files) {
        cli_error("exporter", "out of memory");
        return 1;
    }
    json_arena_init(&x.a, (size_t)64 << 20);
    if (otlp_url) {
        char host[256] = "";
        gethostname(host, sizeof host - 1);
        otlp_conf c = {otlp_url, spool, 0, 0, 0, x.m, host, "tally-exporter", log_stderr, NULL, NULL};
        x.otlp = otlp_exporter_open(&c);
        if (!x.otlp) {
            cli_error("exporter", "cannot start the OTLP exporter");
            return 1;
        }
    }
    size_t nst = 0;
    state_entry *st = read_state(state, &nst);
    char err[512];
    size_t nf = 0;
    char **files = collect_jsonl(srcs, nsrc, &nf, err, sizeof err);
    if (!files) {
        cli_error("exporter", "%s", err);
        return 1;
    }
    for (size_t i = 0; i < nf; i++) add_file(&x, files[i], st, nst, 1, state != NULL);
    free_list(files);
    free(st);

    metrics_http *http = NULL;
    if (!once) {
        http = metrics_http_start(x.m, listen, NULL, NULL, err, sizeof err);
        if (!http) {
            cli_error("exporter", "%s", err);
            return 1;
        }
        fprintf(stderr, "tally exporter: serving /metrics on port %d, following %zu file%s\n", metrics_http_port(http),
                x.n, x.n == 1 ? "" : "s");
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
    int64_t last_scan = clock_ns(CLOCK_MONOTONIC), last_state = last_scan;
    for (;;) {
        for (size_t i = 0; i < x.n; i++) {
            line_ctx lc = {&x, &x.files[i]};
            if (follow_check(&x.files[i].fw, x.files[i].path, handle_line, &lc)) x.files[i].send_from = 0;
            follow_drain(&x.files[i].fw, handle_line, &lc);
        }
        if (x.otlp) otlp_exporter_seal(x.otlp);
        if (once || stop_flag) break;
        int64_t now = clock_ns(CLOCK_MONOTONIC);
        if (now - last_scan > 2000000000LL) {
            /* new runs in the directories */
            files = collect_jsonl(srcs, nsrc, &nf, err, sizeof err);
            for (size_t i = 0; files && i < nf; i++) add_file(&x, files[i], NULL, 0, 0, 0);
            free_list(files);
            last_scan = now;
        }
        if (state && now - last_state > 1000000000LL) {
            write_state(state, &x);
            last_state = now;
        }
        usleep(200000);
    }
    if (once) {
        buf b;
        buf_init(&b, (size_t)256 << 20);
        metrics_render(x.m, &b);
        fwrite(b.p, 1, b.len, stdout);
        buf_free(&b);
    }
    if (x.otlp) otlp_exporter_close(x.otlp);
    if (state && write_state(state, &x) != 0) cli_error("exporter", "cannot write %s: %s", state, strerror(errno));
    metrics_http_stop(http);
    if (x.bad) fprintf(stderr, "tally exporter: %llu lines were not events\n", (unsigned long long)x.bad);
    for (size_t i = 0; i < x.n; i++) {
        follow_close(&x.files[i].fw);
        free(x.files[i].path);
    }
    free(x.files);
    json_arena_free(&x.a);
    metrics_free(x.m);
    free(srcs);
    return 0;
}
