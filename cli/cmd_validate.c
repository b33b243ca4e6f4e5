/*
 * tally validate -- checks files against the toy/v1 wire format
 * (docs/format.md) and prints every problem with its line number:
 * bad JSON (strict RFC 8259), missing required keys, wrong types, t going
 * backwards within one writer, run_start not first, more than one run_end
 * in a run, a torn last line.  Exit 0 when clean, 1 when not, 2 on usage.
 *
 * Runs and writers: tally's events carry an id whose first 12 characters
 * name the run and first 18 the writing process (src/event_id.h), so a
 * file that several runs, or a prefork server's workers, append to is
 * checked per run (run_start first, one run_end) and per writer (t never
 * decreasing).  Lines with other ids or none belong to the latest run and
 * one writer.  Duplicate keys in an object are reported: readers disagree
 * on which one counts.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "event_id.h"
#include "fields.h"
#include "json.h"
#include "source.h"
#include "util.h"

#define MAX_WRITERS 1024
#define MAX_RUNS 1024

typedef struct vrun {
    char key[TALLY_ID_RUN + 1];   /* "" for lines whose id names no run */
    int in_run, ended;
} vrun;

typedef struct vstate {
    const char *path;
    uint64_t problems;
    int seen_any;
    vrun runs[MAX_RUNS];
    int nruns;
    char writer[MAX_WRITERS][TALLY_ID_WRITER + 1];
    double last_t[MAX_WRITERS];
    int nwriters;
} vstate;

/* The run state for `key` (created when `create`); NULL when unknown. */
static vrun *run_state(vstate *s, const char *key, int create)
{
    for (int i = 0; i < s->nruns; i++)
        if (!strcmp(s->runs[i].key, key)) return &s->runs[i];
    if (!create) return NULL;
    vrun *r = &s->runs[s->nruns < MAX_RUNS ? s->nruns++ : MAX_RUNS - 1];
    memset(r, 0, sizeof *r);
    snprintf(r->key, sizeof r->key, "%s", key);
    return r;
}

__attribute__((format(printf, 3, 4))) static void problem(vstate *s, uint64_t line, const char *fmt, ...)
{
    s->problems++;
    printf("%s:%llu: ", s->path, (unsigned long long)line);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

/* Each object's keys once: the first of duplicates is what tally reads,
 * the last what most JSON libraries read. */
static void check_duplicates(vstate *s, uint64_t line, const jv *obj, const char *where, int depth)
{
    if (!obj || obj->type != JV_OBJ || depth > 4) return;
    for (const jv *a = obj->child; a; a = a->next) {
        for (const jv *b = obj->child; b != a; b = b->next)
            if (b->keylen == a->keylen && !memcmp(a->key, b->key, a->keylen)) {
                problem(s, line, "duplicate key %s%.*s", where, (int)(a->keylen > 64 ? 64 : a->keylen), a->key);
                break;
            }
        if (a->type == JV_OBJ) {
            char sub[160];
            snprintf(sub, sizeof sub, "%s%.*s.", where, (int)(a->keylen > 64 ? 64 : a->keylen), a->key);
            check_duplicates(s, line, a, sub, depth + 1);
        }
    }
}


static int is_int(const jv *v) { return jv_is_int(v); }
static int is_num_or_null(const jv *v) { return v && (v->type == JV_NUM || v->type == JV_NULL); }

/* Required keys: name, and the type they must have. */
typedef enum { T_STR, T_INT, T_NUM, T_OBJ, T_NUMNULL } vtype;

static void need(vstate *s, uint64_t line, const jv *obj, const char *where, const char *key, vtype t)
{
    const jv *v = jv_get(obj, key);
    char what[160];
    if (!v) {
        snprintf(what, sizeof what, "%s%s is missing", where, key);
        problem(s, line, "%s", what);
        return;
    }
    int ok = t == T_STR   ? v->type == JV_STR
             : t == T_INT ? is_int(v)
             : t == T_NUM ? v->type == JV_NUM
             : t == T_OBJ ? v->type == JV_OBJ
                          : is_num_or_null(v);
    if (!ok) {
        static const char *const names[] = {"a string", "an integer", "a number", "an object", "a number or null"};
        snprintf(what, sizeof what, "%s%s must be %s", where, key, names[t]);
        problem(s, line, "%s", what);
    }
}

static void maybe(vstate *s, uint64_t line, const jv *obj, const char *where, const char *key, vtype t)
{
    if (jv_get(obj, key)) need(s, line, obj, where, key, t);
}

/* What a request's numbers must mean together: well-typed values that
 * cannot all be true (a writer's bug, or units mixed up). */
static void check_meaning(vstate *s, uint64_t line, const jv *x)
{
    const char *names[] = {"prompt_tokens", "cached_tokens", "cache_write_tokens", "completion_tokens",
                           "reasoning_tokens", "latency_us", "ttft_us"};
    double v[7];
    int has[7];
    for (int i = 0; i < 7; i++) {
        const jv *f = jv_get(x, names[i]);
        has[i] = f && f->type == JV_NUM;
        v[i] = has[i] ? jv_num(f, 0) : 0;
        if (has[i] && v[i] < 0) problem(s, line, "extra.%s is negative (%.17g)", names[i], v[i]);
    }
    if (has[5] && has[6] && v[6] > v[5])
        problem(s, line, "extra.ttft_us (%.17g) is greater than extra.latency_us (%.17g)", v[6], v[5]);
    if (has[0] && v[1] + v[2] > v[0])
        problem(s, line, "extra.cached_tokens + cache_write_tokens (%.17g) are more than prompt_tokens (%.17g)",
                v[1] + v[2], v[0]);
    if (has[3] && v[4] > v[3])
        problem(s, line, "extra.reasoning_tokens (%.17g) are more than completion_tokens (%.17g)", v[4], v[3]);
}

static void check_event(vstate *s, uint64_t line, const jv *v)
{
    if (v->type != JV_OBJ) {
        problem(s, line, "%s", "an event must be a JSON object");
        return;
    }
    const jv *k = jv_get(v, "kind");
    if (!k || k->type != JV_STR) {
        problem(s, line, "%s", k ? "kind must be a string" : "kind is missing");
        return;
    }
    const char *kind = k->s;
    need(s, line, v, "", "t", T_NUM);
    maybe(s, line, v, "", "ts", T_NUM);
    maybe(s, line, v, "", "step", T_INT);
    maybe(s, line, v, "", "phase", T_STR);
    check_duplicates(s, line, v, "", 0);
    const char *id = jv_str(jv_get(v, "id"));
    size_t idlen = id ? strlen(id) : 0;
    int tagged = idlen == TALLY_ID_LEN;
    char runkey[TALLY_ID_RUN + 1] = "";
    if (tagged) snprintf(runkey, sizeof runkey, "%.*s", TALLY_ID_RUN, id);
    int is_start = !strcmp(kind, "run_start");
    /* An event whose run_start is not in this file goes with the latest
     * run, as readers credit it. */
    vrun *run = is_start ? run_state(s, runkey, 1) : run_state(s, runkey, 0);
    if (!run) run = run_state(s, "", 1);
    if (is_start) {
        /* A new run: its writers' t starts again. */
        int keep = 0;
        for (int i = 0; i < s->nwriters; i++) {
            int mine = tagged ? !strncmp(s->writer[i], runkey, TALLY_ID_RUN) : 1;
            if (mine) continue;
            memmove(s->writer[keep], s->writer[i], sizeof s->writer[0]);
            s->last_t[keep++] = s->last_t[i];
        }
        s->nwriters = keep;
    }
    const jv *t = jv_get(v, "t");
    if (t && t->type == JV_NUM) {
        if (jv_num(t, 0) < 0) problem(s, line, "%s", "t is negative");
        /* The writer: run and process for tally's ids, the process for
         * older ones (12 + 10 digits), one writer for the rest. */
        char w[TALLY_ID_WRITER + 1] = "";
        if (tagged) snprintf(w, sizeof w, "%.*s", TALLY_ID_WRITER, id);
        else if (idlen >= 12) snprintf(w, sizeof w, "%.12s", id);
        int wi = -1;
        for (int i = 0; i < s->nwriters; i++)
            if (!strcmp(s->writer[i], w)) wi = i;
        if (wi < 0 && s->nwriters < MAX_WRITERS) {
            wi = s->nwriters++;
            snprintf(s->writer[wi], sizeof s->writer[wi], "%s", w);
            s->last_t[wi] = jv_num(t, 0);
        }
        if (wi >= 0) {
            if (jv_num(t, 0) < s->last_t[wi]) {
                char what[96];
                snprintf(what, sizeof what, "t goes backwards (%.6f after %.6f)", jv_num(t, 0), s->last_t[wi]);
                problem(s, line, "%s", what);
            }
            s->last_t[wi] = jv_num(t, 0);
        }
    }
    int first = !s->seen_any;
    s->seen_any = 1;
    if (is_start) {
        if (run->in_run && !run->ended) problem(s, line, "%s", "run_start inside a run that has not ended");
        run->in_run = 1;
        run->ended = 0;
        need(s, line, v, "", "started_at", T_STR);
        need(s, line, v, "", "host", T_OBJ);
        need(s, line, v, "", "backend", T_OBJ);
        need(s, line, v, "", "model", T_OBJ);
        maybe(s, line, v, "", "schema", T_STR);
        maybe(s, line, v, "", "run_id", T_STR);
        maybe(s, line, v, "", "config", T_OBJ);
        const jv *b = jv_get(v, "backend");
        if (b && b->type == JV_OBJ) need(s, line, b, "backend.", "kind", T_STR);
        const jv *m = jv_get(v, "model");
        if (m && m->type == JV_OBJ) need(s, line, m, "model.", "name", T_STR);
        return;
    }
    if (first) problem(s, line, "%s", "run_start is not the first event");
    else if (run->ended) problem(s, line, "%s", "event after run_end (a new run needs a run_start)");
    if (!strcmp(kind, "run_end")) {
        need(s, line, v, "", "ended_at", T_STR);
        need(s, line, v, "", "reason", T_STR);
        need(s, line, v, "", "stats", T_OBJ);
        const jv *st = jv_get(v, "stats");
        if (st && st->type == JV_OBJ) {
            need(s, line, st, "stats.", "requests", T_INT);
            need(s, line, st, "stats.", "errors", T_INT);
            need(s, line, st, "stats.", "tokens_out", T_INT);
            maybe(s, line, st, "stats.", "events", T_INT);
            maybe(s, line, st, "stats.", "dropped", T_INT);
        }
        const char *r = jv_str(jv_get(v, "reason"));
        if (r && strcmp(r, "completed") && strcmp(r, "interrupted") && strcmp(r, "aborted") && strcmp(r, "errored") &&
            strcmp(r, "not_closed"))
            problem(s, line, "reason '%s' is not completed, interrupted, aborted, errored or not_closed", r);
        if (run->ended && run->in_run) problem(s, line, "%s", "more than one run_end in this run");
        run->ended = 1;
        return;
    }
    const char *name = jv_str(jv_get(v, "name"));
    if (!strcmp(kind, "eval") && name && !strcmp(name, "request")) {
        need(s, line, v, "", "extra", T_OBJ);
        const jv *x = jv_get(v, "extra");
        if (x && x->type == JV_OBJ) {
            /* The named fields (src/fields.h): strings, the required ones present. */
            for (int i = 0; i < N_REQUEST_LABELS; i++) {
                const field_def *f = &tally_request_labels[i];
                if (f->flags & FLD_REQUIRED) need(s, line, x, "extra.", f->key, T_STR);
                else maybe(s, line, x, "extra.", f->key, T_STR);
            }
            /* The numbers: integers, or numbers (null for NaN). */
            for (int i = 0; i < N_REQUEST_NUMBERS; i++) {
                const number_def *f = &tally_request_numbers[i];
                vtype vt = f->type == FLD_I64 ? T_INT : T_NUMNULL;
                if (f->flags & FLD_REQUIRED) need(s, line, x, "extra.", f->key, vt);
                else maybe(s, line, x, "extra.", f->key, vt);
            }
            const jv *ok = jv_get(x, "ok");
            if (ok && ok->type != JV_TRUE && ok->type != JV_FALSE) problem(s, line, "%s", "extra.ok must be a boolean");
            check_meaning(s, line, x);
        }
    } else if (!strcmp(kind, "eval")) {
        maybe(s, line, v, "", "loss", T_NUMNULL);
        maybe(s, line, v, "", "ppl", T_NUMNULL);
        maybe(s, line, v, "", "samples", T_INT);
    } else if (!strcmp(kind, "step")) {
        need(s, line, v, "", "step", T_INT);
        maybe(s, line, v, "", "loss", T_NUMNULL);
        maybe(s, line, v, "", "lr", T_NUMNULL);
        maybe(s, line, v, "", "grad_norm", T_NUMNULL);
        maybe(s, line, v, "", "tokens", T_INT);
        maybe(s, line, v, "", "wall_us", T_INT);
        maybe(s, line, v, "", "metrics", T_OBJ);
    } else if (!strcmp(kind, "epoch")) {
        need(s, line, v, "", "epoch", T_INT);
        maybe(s, line, v, "", "wall_us", T_INT);
    } else if (!strcmp(kind, "error")) {
        need(s, line, v, "", "type", T_STR);
        need(s, line, v, "", "message", T_STR);
    } else if (!strcmp(kind, "note")) {
        need(s, line, v, "", "text", T_STR);
    }
}

static int validate_file(const char *path, uint64_t *total)
{
    line_reader lr;
    if (lr_open(&lr, path, SOURCE_MAX_LINE) != 0) {
        cli_error("validate", "cannot read %s", path);
        return -1;
    }
    vstate *s = calloc(1, sizeof *s);
    if (!s) {
        lr_close(&lr);
        cli_error("validate", "out of memory");
        return -1;
    }
    s->path = strcmp(path, "-") ? path : "stdin";
    json_arena a;
    json_arena_init(&a, (size_t)64 << 20);
    char *line;
    size_t len;
    int complete, toolong, r;
    while ((r = lr_next(&lr, &line, &len, &complete, &toolong)) == 1) {
        if (toolong) {
            problem(s, lr.lineno, "%s", "line longer than 16 MiB");
            continue;
        }
        json_error je;
        json_arena_reset(&a);
        jv *v = json_parse(&a, line, len, &je);
        if (!v) {
            char what[160];
            snprintf(what, sizeof what, "%s: %s at byte %zu", complete ? "bad JSON" : "torn last line", je.what,
                     je.offset);
            problem(s, lr.lineno, "%s", what);
            continue;
        }
        if (!complete) problem(s, lr.lineno, "%s", "the last line has no newline");
        check_event(s, lr.lineno, v);
    }
    if (!s->seen_any && r == 0) problem(s, 0, "%s", "no events");
    int rc = r < 0 ? -1 : 0;
    if (r < 0) cli_error("validate", "read error in %s", path);
    *total += s->problems;
    if (!s->problems && rc == 0) printf("%s: ok (%llu lines)\n", s->path, (unsigned long long)lr.lineno);
    json_arena_free(&a);
    lr_close(&lr);
    free(s);
    return rc;
}

int cmd_validate(int argc, char **argv)
{
    int n = 0, rc = 0;
    uint64_t problems = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: tally validate FILE|DIR|-...\n\n"
                   "Checks JSONL files against the toy/v1 wire format and prints each problem\n"
                   "with its line number: bad JSON, missing required keys, wrong types, t going\n"
                   "backwards within a writer, run_start not first, more than one run_end,\n"
                   "duplicate keys, a torn last line; and what a request's numbers mean\n"
                   "together: negative counts or latency, ttft greater than latency, cached +\n"
                   "cache-write tokens above prompt tokens, reasoning above completion tokens.\n"
                   "A file that several runs append to is checked run by run (by the run part\n"
                   "of each event's id).  A DIR is every *.jsonl under it; '-' is stdin.\n"
                   "Exit status: 0 clean, 1 problems found, 2 usage or unreadable file.\n");
            return 0;
        }
        if (argv[i][0] == '-' && argv[i][1]) {
            cli_error("validate", "unknown option %s (try --help)", argv[i]);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        char err[600];
        int kind = source_kind(argv[i], err, sizeof err);
        if (kind < 0) {
            cli_error("validate", "%s", err);
            rc = 2;
            continue;
        }
        if (kind > 0) {
            cli_error("validate", "%s is a database: validate checks JSONL files (tally stats and tally runs "
                                  "read databases)", argv[i]);
            rc = 2;
            continue;
        }
        size_t nf = 0;
        char **files = collect_jsonl(&argv[i], 1, &nf, err, sizeof err);
        if (!files) {
            cli_error("validate", "%s", err);
            rc = 2;
            continue;
        }
        if (!nf) {
            cli_error("validate", "%s has no *.jsonl file", argv[i]);
            rc = 2;
        }
        for (size_t k = 0; k < nf; k++) {
            n++;
            if (validate_file(files[k], &problems) != 0) rc = 2;
        }
        free_list(files);
    }
    if (!n && rc) return rc;
    if (!n) {
        cli_error("validate", "no FILE given");
        return 2;
    }
    if (rc) return rc;
    if (problems) printf("%llu problems\n", (unsigned long long)problems);
    return problems ? 1 : 0;
}
