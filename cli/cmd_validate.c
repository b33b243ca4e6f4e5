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
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "event_id.h"
#include "fields.h"
#include "json.h"
#include "par.h"
#include "source.h"
#include "util.h"

#define MAX_WRITERS 1024
#define MAX_RUNS 1024
#define VTEXT_MAX 8192     /* one line's problems, as text */

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

/* What one line's checks found: each problem a line of text, printed by
 * say() with the file and line number.  The checks of a line alone fill
 * it; those of the order of lines (order()) print around it. */
typedef struct vcheck {
    char text[VTEXT_MAX];
    size_t len;
} vcheck;

__attribute__((format(printf, 2, 3))) static void problem(vcheck *c, const char *fmt, ...)
{
    if (c->len >= sizeof c->text - 1) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->text + c->len, sizeof c->text - 1 - c->len, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    c->len += (size_t)n < sizeof c->text - 1 - c->len ? (size_t)n : sizeof c->text - 2 - c->len;
    c->text[c->len++] = '\n';
}

/* Each object's keys once: the first of duplicates is what tally reads,
 * the last what most JSON libraries read. */
static void check_duplicates(vcheck *s, const jv *obj, const char *where, int depth)
{
    if (!obj || obj->type != JV_OBJ || depth > 4) return;
    for (const jv *a = obj->child; a; a = a->next) {
        for (const jv *b = obj->child; b != a; b = b->next)
            if (b->keylen == a->keylen && !memcmp(a->key, b->key, a->keylen)) {
                problem(s, "duplicate key %s%.*s", where, (int)(a->keylen > 64 ? 64 : a->keylen), a->key);
                break;
            }
        if (a->type == JV_OBJ) {
            char sub[160];
            snprintf(sub, sizeof sub, "%s%.*s.", where, (int)(a->keylen > 64 ? 64 : a->keylen), a->key);
            check_duplicates(s, a, sub, depth + 1);
        }
    }
}


static int is_int(const jv *v) { return jv_is_int(v); }
static int is_num_or_null(const jv *v) { return v && (v->type == JV_NUM || v->type == JV_NULL); }

/* Required keys: name, and the type they must have. */
typedef enum { T_STR, T_INT, T_NUM, T_OBJ, T_NUMNULL } vtype;

static void need(vcheck *s, const jv *obj, const char *where, const char *key, vtype t)
{
    const jv *v = jv_get(obj, key);
    char what[160];
    if (!v) {
        snprintf(what, sizeof what, "%s%s is missing", where, key);
        problem(s, "%s", what);
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
        problem(s, "%s", what);
    }
}

/* A key of an object: its type, and whether it must be there. */
typedef struct vkey {
    const char *key;
    vtype type;
    int required;
} vkey;
#define VKEYS(obj, where, list) check_keys(s, (obj), (where), (list), sizeof(list) / sizeof((list)[0]))

static void maybe(vcheck *s, const jv *obj, const char *where, const char *key, vtype t)
{
    if (jv_get(obj, key)) need(s, obj, where, key, t);
}

static void check_keys(vcheck *s, const jv *obj, const char *where, const vkey *k, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (k[i].required) need(s, obj, where, k[i].key, k[i].type);
        else maybe(s, obj, where, k[i].key, k[i].type);
    }
}

/* What each kind of event has (docs/format.md). */
static const vkey every_event[] = {{"t", T_NUM, 1}, {"ts", T_NUM, 0}, {"step", T_INT, 0}, {"phase", T_STR, 0}};
static const vkey run_start_keys[] = {{"started_at", T_STR, 1}, {"host", T_OBJ, 1},    {"backend", T_OBJ, 1},
                                      {"model", T_OBJ, 1},      {"schema", T_STR, 0},  {"run_id", T_STR, 0},
                                      {"config", T_OBJ, 0}};
static const vkey run_end_keys[] = {{"ended_at", T_STR, 1}, {"reason", T_STR, 1}, {"stats", T_OBJ, 1}};
static const vkey run_end_stats[] = {{"requests", T_INT, 1}, {"errors", T_INT, 1}, {"tokens_out", T_INT, 1},
                                     {"events", T_INT, 0},   {"dropped", T_INT, 0}};
static const vkey eval_keys[] = {{"loss", T_NUMNULL, 0}, {"ppl", T_NUMNULL, 0}, {"samples", T_INT, 0}};
static const vkey step_keys[] = {{"step", T_INT, 1},      {"loss", T_NUMNULL, 0},      {"lr", T_NUMNULL, 0},
                                 {"grad_norm", T_NUMNULL, 0}, {"tokens", T_INT, 0}, {"wall_us", T_INT, 0},
                                 {"metrics", T_OBJ, 0}};
static const vkey epoch_keys[] = {{"epoch", T_INT, 1}, {"wall_us", T_INT, 0}};
static const vkey error_keys[] = {{"type", T_STR, 1}, {"message", T_STR, 1}};
static const vkey note_keys[] = {{"text", T_STR, 1}};

/* What a request's numbers must mean together: well-typed values that
 * cannot all be true (a writer's bug, or units mixed up). */
static void check_meaning(vcheck *s, const jv *x)
{
    const char *names[] = {"prompt_tokens", "cached_tokens", "cache_write_tokens", "completion_tokens",
                           "reasoning_tokens", "latency_us", "ttft_us"};
    double v[7];
    int has[7];
    for (int i = 0; i < 7; i++) {
        const jv *f = jv_get(x, names[i]);
        has[i] = f && f->type == JV_NUM;
        v[i] = has[i] ? jv_num(f, 0) : 0;
        if (has[i] && v[i] < 0) problem(s, "extra.%s is negative (%.17g)", names[i], v[i]);
    }
    if (has[5] && has[6] && v[6] > v[5])
        problem(s, "extra.ttft_us (%.17g) is greater than extra.latency_us (%.17g)", v[6], v[5]);
    if (has[0] && v[1] + v[2] > v[0])
        problem(s, "extra.cached_tokens + cache_write_tokens (%.17g) are more than prompt_tokens (%.17g)",
                v[1] + v[2], v[0]);
    if (has[3] && v[4] > v[3])
        problem(s, "extra.reasoning_tokens (%.17g) are more than completion_tokens (%.17g)", v[4], v[3]);
}

/* What the checks of the order of lines need to know of one line. */
typedef struct vline {
    uint64_t lineno;
    int event;                /* an object with a kind: the order checks apply */
    int is_start, is_end, tagged, has_t;
    double t;
    char runkey[TALLY_ID_RUN + 1];
    char writer[TALLY_ID_WRITER + 1];
    size_t before;            /* the problems printed before the order checks: text[0..before) */
    size_t len;               /* all its problems' text (when kept in a buffer) */
} vline;

/* The checks of one line alone (f->event: it is an event; the problems
 * found before the order checks are text[0..f->before), the rest after). */
static void check_line(vcheck *s, const jv *v, vline *f)
{
    f->event = 0;
    if (v->type != JV_OBJ) {
        problem(s, "%s", "an event must be a JSON object");
        f->before = s->len;
        return;
    }
    const jv *k = jv_get(v, "kind");
    if (!k || k->type != JV_STR) {
        problem(s, "%s", k ? "kind must be a string" : "kind is missing");
        f->before = s->len;
        return;
    }
    f->event = 1;
    const char *kind = k->s;
    VKEYS(v, "", every_event);
    check_duplicates(s, v, "", 0);
    const char *id = jv_str(jv_get(v, "id"));
    size_t idlen = id ? strlen(id) : 0;
    f->tagged = idlen == TALLY_ID_LEN;
    f->runkey[0] = f->writer[0] = 0;
    if (f->tagged) snprintf(f->runkey, sizeof f->runkey, "%.*s", TALLY_ID_RUN, id);
    f->is_start = !strcmp(kind, "run_start");
    f->is_end = !strcmp(kind, "run_end");
    const jv *t = jv_get(v, "t");
    f->has_t = t && t->type == JV_NUM;
    if (f->has_t) {
        f->t = jv_num(t, 0);
        if (f->t < 0) problem(s, "%s", "t is negative");
        /* The writer: run and process for tally's ids, the process for
         * older ones (12 + 10 digits), one writer for the rest. */
        if (f->tagged) snprintf(f->writer, sizeof f->writer, "%.*s", TALLY_ID_WRITER, id);
        else if (idlen >= 12) snprintf(f->writer, sizeof f->writer, "%.12s", id);
    }
    f->before = s->len;
    if (f->is_start) {
        VKEYS(v, "", run_start_keys);
        const jv *b = jv_get(v, "backend");
        if (b && b->type == JV_OBJ) need(s, b, "backend.", "kind", T_STR);
        const jv *m = jv_get(v, "model");
        if (m && m->type == JV_OBJ) need(s, m, "model.", "name", T_STR);
        return;
    }
    if (f->is_end) {
        VKEYS(v, "", run_end_keys);
        const jv *st = jv_get(v, "stats");
        if (st && st->type == JV_OBJ) VKEYS(st, "stats.", run_end_stats);
        const char *r = jv_str(jv_get(v, "reason"));
        if (r && strcmp(r, "completed") && strcmp(r, "interrupted") && strcmp(r, "aborted") && strcmp(r, "errored") &&
            strcmp(r, "not_closed"))
            problem(s, "reason '%s' is not completed, interrupted, aborted, errored or not_closed", r);
        return;
    }
    const char *name = jv_str(jv_get(v, "name"));
    if (!strcmp(kind, "eval") && name && !strcmp(name, "request")) {
        need(s, v, "", "extra", T_OBJ);
        const jv *x = jv_get(v, "extra");
        if (x && x->type == JV_OBJ) {
            /* The named fields (src/fields.h): strings, the required ones present. */
            for (int i = 0; i < N_REQUEST_LABELS; i++) {
                const field_def *d = &tally_request_labels[i];
                if (d->flags & FLD_REQUIRED) need(s, x, "extra.", d->key, T_STR);
                else maybe(s, x, "extra.", d->key, T_STR);
            }
            /* The numbers: integers, or numbers (null for NaN). */
            for (int i = 0; i < N_REQUEST_NUMBERS; i++) {
                const number_def *d = &tally_request_numbers[i];
                vtype vt = d->type == FLD_I64 ? T_INT : T_NUMNULL;
                if (d->flags & FLD_REQUIRED) need(s, x, "extra.", d->key, vt);
                else maybe(s, x, "extra.", d->key, vt);
            }
            const jv *ok = jv_get(x, "ok");
            if (ok && ok->type != JV_TRUE && ok->type != JV_FALSE) problem(s, "%s", "extra.ok must be a boolean");
            check_meaning(s, x);
        }
    } else if (!strcmp(kind, "eval")) {
        VKEYS(v, "", eval_keys);
    } else if (!strcmp(kind, "step")) {
        VKEYS(v, "", step_keys);
    } else if (!strcmp(kind, "epoch")) {
        VKEYS(v, "", epoch_keys);
    } else if (!strcmp(kind, "error")) {
        VKEYS(v, "", error_keys);
    } else if (!strcmp(kind, "note")) {
        VKEYS(v, "", note_keys);
    }
}

/* One line's problems, each with the file and line number. */
static void say(vstate *s, uint64_t lineno, const char *text, size_t n)
{
    for (size_t i = 0; i < n;) {
        const char *nl = memchr(text + i, '\n', n - i);
        size_t k = nl ? (size_t)(nl - (text + i)) : n - i;
        printf("%s:%llu: %.*s\n", s->path, (unsigned long long)lineno, (int)k, text + i);
        s->problems++;
        i += k + 1;
    }
}

__attribute__((format(printf, 3, 4))) static void order_problem(vstate *s, uint64_t lineno, const char *fmt, ...)
{
    s->problems++;
    printf("%s:%llu: ", s->path, (unsigned long long)lineno);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

/* The checks of the order of lines (t per writer, run_start first, one
 * run_end), in the file's order, with the line's own problems around
 * them as the checks meet them. */
static void order(vstate *s, const vline *f, const char *text, size_t len)
{
    say(s, f->lineno, text, f->before);
    if (!f->event) return;
    /* An event whose run_start is not in this file goes with the latest
     * run, as readers credit it. */
    vrun *run = run_state(s, f->runkey, f->is_start);
    if (!run) run = run_state(s, "", 1);
    if (f->is_start) {
        /* A new run: its writers' t starts again. */
        int keep = 0;
        for (int i = 0; i < s->nwriters; i++) {
            int mine = f->tagged ? !strncmp(s->writer[i], f->runkey, TALLY_ID_RUN) : 1;
            if (mine) continue;
            memmove(s->writer[keep], s->writer[i], sizeof s->writer[0]);
            s->last_t[keep++] = s->last_t[i];
        }
        s->nwriters = keep;
    }
    if (f->has_t) {
        int wi = -1;
        for (int i = 0; i < s->nwriters; i++)
            if (!strcmp(s->writer[i], f->writer)) wi = i;
        if (wi < 0 && s->nwriters < MAX_WRITERS) {
            wi = s->nwriters++;
            snprintf(s->writer[wi], sizeof s->writer[wi], "%s", f->writer);
            s->last_t[wi] = f->t;
        }
        if (wi >= 0) {
            if (f->t < s->last_t[wi])
                order_problem(s, f->lineno, "t goes backwards (%.6f after %.6f)", f->t, s->last_t[wi]);
            s->last_t[wi] = f->t;
        }
    }
    int first = !s->seen_any;
    s->seen_any = 1;
    if (f->is_start) {
        if (run->in_run && !run->ended) order_problem(s, f->lineno, "%s", "run_start inside a run that has not ended");
        run->in_run = 1;
        run->ended = 0;
        say(s, f->lineno, text + f->before, len - f->before);
        return;
    }
    if (first) order_problem(s, f->lineno, "%s", "run_start is not the first event");
    else if (run->ended) order_problem(s, f->lineno, "%s", "event after run_end (a new run needs a run_start)");
    say(s, f->lineno, text + f->before, len - f->before);
    if (f->is_end) {
        if (run->ended && run->in_run) order_problem(s, f->lineno, "%s", "more than one run_end in this run");
        run->ended = 1;
    }
}

/* One line read: its own checks (c), as check_line says. */
static void check_read(vcheck *c, json_arena *a, char *line, size_t len, const line_info *li, vline *f)
{
    c->len = 0;
    f->event = 0;
    if (li->toolong) {
        problem(c, "%s", "line longer than 16 MiB");
        f->before = c->len;
        return;
    }
    json_error je;
    json_arena_reset(a);
    jv *v = json_parse(a, line, len, &je);
    if (!v) {
        problem(c, "%s: %s at byte %zu", li->complete ? "bad JSON" : "torn last line", je.what, je.offset);
        f->before = c->len;
        return;
    }
    if (!li->complete) problem(c, "%s", "the last line has no newline");
    check_line(c, v, f);
}

/* A file's end: "no events", or "ok" when it had no problems. */
static void file_end(vstate *s, uint64_t lines, uint64_t *total)
{
    if (!s->seen_any) order_problem(s, 0, "%s", "no events");
    *total += s->problems;
    if (!s->problems) printf("%s: ok (%llu lines)\n", s->path, (unsigned long long)lines);
}

/* ---- with every core: the lines' own checks on threads, the order here ---------------- */

static int par_line(json_arena *a, char *line, size_t len, const line_info *li, uint64_t lineno, buf *out)
{
    vcheck c;
    vline f;
    f.lineno = lineno;
    check_read(&c, a, line, len, li, &f);
    f.len = c.len;
    buf_put(out, &f, sizeof f);
    buf_put(out, c.text, c.len);
    return out->failed ? -1 : 0;
}

typedef struct vpar {
    char **files;
    vstate *s;                /* the file being handed on */
    uint64_t *total;
} vpar;

static int par_take(void *ud, const par_out *u)
{
    vpar *v = ud;
    vstate *s = v->s;
    if (u->before == 0) {
        memset(s, 0, sizeof *s);
        s->path = v->files[u->file];
    }
    for (size_t at = 0; at + sizeof(vline) <= u->out->len;) {
        vline f;
        memcpy(&f, u->out->p + at, sizeof f);
        at += sizeof f;
        f.lineno += u->before;
        order(s, &f, u->out->p + at, f.len);
        at += f.len;
    }
    if (u->last) file_end(s, u->before + u->lines, v->total);
    return 0;
}

static int validate_par(char **files, size_t nf, int threads, uint64_t *total)
{
    vpar v = {files, calloc(1, sizeof(vstate)), total};
    if (!v.s) {
        cli_error("validate", "out of memory");
        return -1;
    }
    static const par_lines ops = {par_line, par_take};
    char err[600];
    int rc = par_read_lines(files, nf, threads, &ops, &v, err, sizeof err);
    if (rc) cli_error("validate", "%s", err);
    free(v.s);
    return rc;
}

static int validate_file(const char *path, uint64_t *total)
{
    line_reader lr;
    if (lr_open(&lr, path, SOURCE_MAX_LINE) != 0) {
        cli_error("validate", "cannot read %s", path);
        return -1;
    }
    vstate *s = calloc(1, sizeof *s);
    vcheck *c = malloc(sizeof *c);
    if (!s || !c) {
        free(s);
        free(c);
        lr_close(&lr);
        cli_error("validate", "out of memory");
        return -1;
    }
    s->path = strcmp(path, "-") ? path : "stdin";
    json_arena a;
    json_arena_init(&a, (size_t)64 << 20);
    char *line;
    size_t len;
    line_info li = {0};
    int r;
    while ((r = lr_next(&lr, &line, &len, &li.complete, &li.toolong)) == 1) {
        vline f;
        f.lineno = lr.lineno;
        check_read(c, &a, line, len, &li, &f);
        order(s, &f, c->text, c->len);
    }
    int rc = r < 0 ? -1 : 0;
    if (r < 0) cli_error("validate", "read error in %s", path);
    else file_end(s, lr.lineno, total);
    if (r < 0) *total += s->problems;
    json_arena_free(&a);
    lr_close(&lr);
    free(s);
    free(c);
    return rc;
}

int cmd_validate(int argc, char **argv)
{
    int n = 0, rc = 0, threads = 0;
    uint64_t problems = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads")) {
            if (cli_threads("validate", i + 1 < argc ? argv[i + 1] : NULL, &threads)) return 2;
            argv[i] = argv[i + 1] = NULL; /* not a FILE */
            i++;
            continue;
        }
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
                   "\n"
                   THREADS_HELP
                   "\n"
                   "Exit status: 0 clean, 1 problems found, 2 usage or unreadable file.\n");
            return 0;
        }
        if (argv[i][0] == '-' && argv[i][1]) {
            cli_error("validate", "unknown option %s (try --help)", argv[i]);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        if (!argv[i]) continue;
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
        if (par_threads(threads) > 1 && strcmp(argv[i], "-")) {
            /* Every core: the files that can be read, in order. */
            size_t keep = 0;
            for (size_t k = 0; k < nf; k++) {
                n++;
                int fd = open(files[k], O_RDONLY | O_CLOEXEC);
                if (fd < 0) {
                    cli_error("validate", "cannot read %s", files[k]);
                    rc = 2;
                    free(files[k]);
                    continue;
                }
                close(fd);
                files[keep++] = files[k];
            }
            files[keep] = NULL;
            if (keep && validate_par(files, keep, threads, &problems) != 0) rc = 2;
        } else {
            for (size_t k = 0; k < nf; k++) {
                n++;
                if (validate_file(files[k], &problems) != 0) rc = 2;
            }
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
