/*
 * tally tail -- events as readable lines, as they are appended.
 *
 * With -f it follows the file: a file that shrinks (truncated) is read
 * again from the start, a file replaced by another (rotated: a new inode
 * at the path) is finished and the new one read from its start.  Only
 * whole lines are shown; a torn line waits for its newline (and one left
 * torn when tail stops is reported, not printed).
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
#include "encode.h"
#include "fields.h"
#include "follow.h"
#include "json.h"
#include "source.h"
#include "util.h"

#define MAX_PENDING ((size_t)16 << 20)
#define TAIL_MAX_N 100000000   /* -n: remembering this many line starts takes 800 MB */

static volatile sig_atomic_t stop_flag;
/* Where events are shown: stdout, escaping control characters from event
 * data when it is a terminal. */
static FILE *tout;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static const char *s_or(const jv *v, const char *def)
{
    const char *s = jv_str(v);
    return s ? s : def;
}

static void put_num(const char *label, const jv *v, double scale, const char *unit)
{
    if (v && v->type == JV_NUM) fprintf(tout, " %s=%.4g%s", label, jv_num(v, 0) * scale, unit);
}

/* One event as a line a person reads. */
static void show(json_arena *a, const char *line, size_t len)
{
    json_arena_reset(a);
    jv *v = json_parse(a, line, len, NULL);
    if (!v || v->type != JV_OBJ) {
        fprintf(tout, "?? %.*s\n", (int)(len > 200 ? 200 : len), line);
        return;
    }
    const jv *ts = jv_get(v, "ts"), *t = jv_get(v, "t");
    if (ts && ts->type == JV_NUM) {
        time_t sec = (time_t)floor(jv_num(ts, 0));
        struct tm tm;
        gmtime_r(&sec, &tm);
        char hms[16];
        strftime(hms, sizeof hms, "%H:%M:%S", &tm);
        fprintf(tout, "%s.%03d ", hms, (int)((jv_num(ts, 0) - floor(jv_num(ts, 0))) * 1000));
    } else if (t && t->type == JV_NUM) {
        fprintf(tout, "t=%-10.3f ", jv_num(t, 0));
    }
    const char *kind = s_or(jv_get(v, "kind"), NULL);
    if (!kind) kind = s_or(jv_get(v, "tag"), "?");
    const jv *x = jv_get(v, "extra");
    if (!strcmp(kind, "eval") && !strcmp(s_or(jv_get(v, "name"), ""), "request") && x) {
        fprintf(tout, "request %s", s_or(jv_get(x, "model"), "?"));
        /* The named fields tail shows (src/fields.h), but the model. */
        for (int i = 1; i < N_REQUEST_LABELS; i++) {
            const field_def *f = &tally_request_labels[i];
            const char *val = jv_str(jv_getn(x, f->key, f->keylen));
            if ((f->flags & FLD_TAIL) && val) fprintf(tout, " %s=%s", f->key, val);
        }
        fprintf(tout, " tokens=%lld/%lld", (long long)jv_int(jv_get(x, "prompt_tokens"), 0),
               (long long)jv_int(jv_get(x, "completion_tokens"), 0));
        put_num("latency", jv_get(x, "latency_us"), 1e-3, "ms");
        put_num("ttft", jv_get(x, "ttft_us"), 1e-3, "ms");
        put_num("cost", jv_get(x, "cost_nusd"), 1e-9, "$");
        put_num("energy", jv_get(x, "energy_j"), 1, "J");
        const jv *ok = jv_get(x, "ok");
        if (ok && ok->type == JV_FALSE) fprintf(tout, " FAILED");
        if (jv_get(x, "error")) fprintf(tout, " error=\"%s\"", s_or(jv_get(x, "error"), ""));
        if (jv_get(x, "degraded")) fprintf(tout, " degraded=%s", s_or(jv_get(x, "degraded"), ""));
    } else if (!strcmp(kind, "step") || !strcmp(kind, "step_end")) {
        fprintf(tout, "step %lld", (long long)jv_int(jv_get(v, "step"), -1));
        put_num("loss", jv_get(v, "loss"), 1, "");
        put_num("lr", jv_get(v, "lr"), 1, "");
        put_num("grad_norm", jv_get(v, "grad_norm"), 1, "");
        put_num("wall", jv_get(v, "wall_us"), 1e-3, "ms");
        if (jv_get(v, "unfinished")) fprintf(tout, " UNFINISHED");
    } else if (!strcmp(kind, "run_start")) {
        const jv *m = jv_get(v, "model");
        fprintf(tout, "run_start %s model=%s phase=%s", s_or(jv_get(v, "run_id"), "-"),
               m && m->type == JV_OBJ ? s_or(jv_get(m, "name"), "-") : s_or(m, "-"), s_or(jv_get(v, "phase"), "-"));
    } else if (!strcmp(kind, "run_end")) {
        const jv *st = jv_get(v, "stats");
        fprintf(tout, "run_end %s requests=%lld errors=%lld dropped=%lld", s_or(jv_get(v, "reason"), "-"),
               (long long)jv_int(jv_get(st, "requests"), 0), (long long)jv_int(jv_get(st, "errors"), 0),
               (long long)jv_int(jv_get(st, "dropped"), 0));
    } else if (!strcmp(kind, "error")) {
        fprintf(tout, "ERROR %s: %s", s_or(jv_get(v, "type"), "?"), s_or(jv_get(v, "message"), ""));
    } else if (!strcmp(kind, "note")) {
        fprintf(tout, "note %s", s_or(jv_get(v, "text"), ""));
    } else {
        /* Anything else: the kind and the rest as compact JSON. */
        buf b;
        buf_init(&b, 1 << 16);
        jv_write(&b, v);
        fprintf(tout, "%s %.*s", kind, (int)(b.len > 300 ? 300 : b.len), b.p);
        buf_free(&b);
    }
    fprintf(tout, "\n");
}

static void show_line(void *ud, const char *line, size_t len, off_t at)
{
    (void)at;
    show(ud, line, len);
}

/* Prints every whole line from the current position. */
static void drain(follower *fw, json_arena *a)
{
    follow_drain(fw, show_line, a);
    fflush(tout);
}

/* Standard input: each event as it arrives (-f), or the last n at its end
 * (kept in a ring of at most n lines and TAIL_STDIN_MAX bytes). */
#define TAIL_STDIN_MAX ((size_t)256 << 20)
static int tail_stdin(json_arena *a, int follow, long n)
{
    line_reader lr;
    if (lr_open(&lr, "-", MAX_PENDING) != 0) {
        cli_error("tail", "cannot read standard input");
        return 1;
    }
    char **ring = NULL;
    size_t *lens = NULL, held = 0;
    uint64_t seen = 0;
    if (!follow && n > 0) {
        ring = calloc((size_t)n, sizeof *ring);
        lens = calloc((size_t)n, sizeof *lens);
        if (!ring || !lens) {
            free(ring);
            free(lens);
            lr_close(&lr);
            cli_error("tail", "out of memory for -n %ld", n);
            return 1;
        }
    }
    char *l;
    size_t len;
    int complete, toolong, rc = 0, r;
    while ((r = lr_next(&lr, &l, &len, &complete, &toolong)) == 1) {
        if (!complete) {
            fprintf(stderr, "tally tail: the last line is torn (%zu bytes, not shown)\n", len);
            break;
        }
        if (toolong) continue;
        if (follow || n == 0) {
            show(a, l, len);
            fflush(tout);
            continue;
        }
        size_t k = (size_t)(seen++ % (uint64_t)n);
        held -= lens[k];
        free(ring[k]);
        ring[k] = malloc(len);
        lens[k] = ring[k] ? len : 0;
        if (ring[k]) memcpy(ring[k], l, len);
        held += lens[k];
        if (!ring[k] || held > TAIL_STDIN_MAX) {
            cli_error("tail", "the last %ld lines of standard input are more than %zu MB: use a smaller -n", n,
                      TAIL_STDIN_MAX >> 20);
            rc = 1;
            break;
        }
    }
    if (r < 0) {
        cli_error("tail", "read error on standard input");
        rc = 1;
    }
    if (ring && !rc) {
        uint64_t first = seen > (uint64_t)n ? seen - (uint64_t)n : 0;
        for (uint64_t i = first; i < seen; i++) show(a, ring[i % (uint64_t)n], lens[i % (uint64_t)n]);
    }
    if (ring)
        for (long i = 0; i < n; i++) free(ring[i]);
    free(ring);
    free(lens);
    lr_close(&lr);
    return rc;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tally tail [-f] [-n N] FILE|-\n"
            "\n"
            "Prints events as readable lines.  Without -f: the last N events (default\n"
            "10; -n 0 for all) and exits.  With -f: keeps printing as events are\n"
            "appended, across truncation and rotation, until interrupted.\n"
            "'-' reads standard input: the last N events at its end, or with -f each\n"
            "event as it arrives until the input ends.  FILE is one JSONL file (a run's\n"
            "events.jsonl); for a directory of runs or a database use tally requests.\n"
            "On a terminal, control characters in event data are shown as \\xNN\n"
            "(TALLY_ESCAPE_CONTROLS=1 does the same when writing to a pipe).\n");
}

int cmd_tail(int argc, char **argv)
{
    int follow = 0;
    long last = 10;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--follow")) {
            follow = 1;
        } else if (!strcmp(argv[i], "-n")) {
            char *end = NULL;
            errno = 0;
            if (i + 1 < argc) last = strtol(argv[i + 1], &end, 10);
            if (i + 1 >= argc || !end || end == argv[i + 1] || *end || errno || last < 0 || last > TAIL_MAX_N) {
                cli_error("tail", "-n needs a number from 0 to %d", TAIL_MAX_N);
                return 2;
            }
            i++;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            cli_error("tail", "unknown option %s (try --help)", argv[i]);
            return 2;
        } else if (!path) {
            path = argv[i];
        } else {
            cli_error("tail", "one FILE at a time");
            return 2;
        }
    }
    if (!path) {
        cli_error("tail", "no FILE given (try --help)");
        return 2;
    }
    char err[600];
    int kind = source_kind(path, err, sizeof err);
    struct stat st;
    if (kind < 0) {
        cli_error("tail", "%s", err);
        return 1;
    }
    if (strcmp(path, "-") && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        cli_error("tail", "%s is a directory: tail follows one file (a run's events.jsonl); "
                          "tally requests or tally stats read a directory of runs", path);
        return 2;
    }
    if (kind > 0) {
        cli_error("tail", "%s is a database: tail follows JSONL files; tally requests lists a database's requests",
                  path);
        return 2;
    }
    tout = cli_safe_stdout();
    json_arena a;
    json_arena_init(&a, (size_t)64 << 20);
    if (!strcmp(path, "-")) {
        int rc = tail_stdin(&a, follow, last);
        json_arena_free(&a);
        if (tout != stdout) fclose(tout);
        return rc;
    }
    follower fw;
    memset(&fw, 0, sizeof fw);
    if (follow_open(&fw, path, 0, MAX_PENDING) != 0) {
        cli_error("tail", "cannot read %s: %s", path, strerror(errno));
        return 1;
    }
    /* The last N whole lines: find where they start. */
    if (last > 0) {
        line_reader lr;
        if (lr_open(&lr, path, MAX_PENDING) == 0) {
            uint64_t *starts = calloc((size_t)last, sizeof *starts);
            if (!starts) {
                cli_error("tail", "out of memory for -n %ld", last);
                lr_close(&lr);
                return 1;
            }
            uint64_t n = 0;
            char *l;
            size_t len;
            int complete, toolong;
            while (lr_next(&lr, &l, &len, &complete, &toolong) == 1)
                if (complete) starts[n++ % (uint64_t)last] = lr.offset;
            if (n > (uint64_t)last) {
                fw.pos = (off_t)starts[n % (uint64_t)last];
                fseeko(fw.f, fw.pos, SEEK_SET);
                fw.line_at = fw.pos;
            }
            free(starts);
            lr_close(&lr);
        }
    }
    drain(&fw, &a);
    if (!follow) {
        if (fw.pending.len) fprintf(stderr, "tally tail: the last line is torn (%zu bytes, not shown)\n", fw.pending.len);
        follow_close(&fw);
        json_arena_free(&a);
        if (tout != stdout) fclose(tout);
        return 0;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    while (!stop_flag) {
        usleep(200000);
        follow_check(&fw, path, show_line, &a);
        drain(&fw, &a);
    }
    follow_close(&fw);
    json_arena_free(&a);
    if (tout != stdout) fclose(tout);
    return 0;
}
