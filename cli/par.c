/*
 * par -- JSONL files read by every core (see par.h).
 *
 * In file order (no par_ops), threads read chunks of 1 MiB into row
 * batches (or par_lines' bytes), at most `window` chunks ahead of the one
 * the calling thread is handing on; it waits for each chunk in turn.
 *
 * Work is cut into units: a file smaller than two chunks is one unit, a
 * larger one a unit per chunk of bytes.  A chunk owns the lines that
 * start inside it: its reader starts at the byte before the chunk, skips
 * the rest of the line that holds it (the previous chunk's last line,
 * which that chunk reads whole, past its end), and stops before the first
 * line that starts at or after the chunk's end.  So no line is split,
 * dropped or read twice, and only the file's last line can be torn.
 *
 * What a line means can depend on lines before it (a reader's context,
 * src/row.h): which run an event belongs to and that run's model come
 * from the run_start lines before it, and a TelemetryLogger step_end's
 * wall time from the step_begin before it.  So a thread reads its whole
 * chunk into memory first and searches the raw bytes for run_start and
 * for "tag" keys valued step_begin or step_end, noting where those lines
 * start; then (the chunks before it in its file searched too, which
 * their threads do first thing) it takes its context from a cursor over
 * the file that replays, once each and in order, the run_starts before
 * the chunk and the last step_begin or step_end line before it -- exactly
 * the sequential reader's context, since nothing else changes it -- and
 * parses its lines from the bytes it already holds.  So each byte is read
 * once.  The contexts are taken in file order (each a copy of the cursor);
 * the chunks are parsed at once.
 *
 * Each thread aggregates into a consumer of its own (ops->fork), merged at
 * the end (ops->join): a question whose answer merges exactly (counts,
 * sums, sketches, first/last by time) comes out as the one-thread answer.
 * Bad lines are reported with their line numbers, counted across chunks.
 */
#include "par.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "source.h"
#include "util.h"

#define DEFAULT_CHUNK ((uint64_t)2 << 20)
/* In file order a chunk's rows wait in memory (about 2.5 times its bytes)
 * until handed on: smaller chunks keep that to a few MB per thread. */
#define ORDERED_CHUNK ((uint64_t)1 << 20)
/* The strings of one unit's rows: its lines, and each row's run name from
 * the context (a cap far above what a chunk of real lines needs). */
#define ROWS_MAX_BYTES ((size_t)256 << 20)

#define SPARES 64

/* A line the context may need: a run_start, or a step_begin / step_end
 * (or a line that only looks like one: replaying it changes nothing). */
enum { MARK_RUN = 1, MARK_STEP = 2 };
typedef struct mark {
    uint64_t off;             /* where the line starts */
    int what;                 /* MARK_* */
} mark;

typedef struct badline {
    uint64_t lineno;          /* within the unit */
    char why[160];
} badline;

typedef struct unit {
    int file;
    uint64_t start, end;      /* end: UINT64_MAX = to the end of the file */
    int whole;                /* its file's only unit: read from the start with a fresh context */
    /* the search of its bytes */
    mark *marks;
    size_t nmarks, capmarks;
    /* the read */
    source_stats st;
    badline bad[SOURCE_MAX_REPORTED];
    int nbad;
    int failed;               /* could not be read */
    /* in file order (par.ordered) */
    row_batch rb;             /* its events, until the reading thread takes them */
    buf out;                  /* par_lines: what its lines gave */
    int nomem;
    int done;                 /* under par.mu */
} unit;

/* A file's context, as far as its units' marks have been replayed. */
typedef struct cursor {
    row_ctx ctx;
    row_ctx scratch;          /* a step line read on its own */
    size_t unit, mark;        /* the next mark to replay */
    uint64_t last;            /* one past the start of the last run_start replayed */
    size_t turn;              /* the unit whose context is next (under par.mu) */
} cursor;

typedef struct par {
    char **files;
    size_t nfiles;
    const source_opts *o;
    const par_ops *ops;
    unit *u;
    size_t nu;
    uint64_t chunk;
    _Atomic size_t next;
    _Atomic int stop;
    cursor **cur;             /* per file, made by its first unit that needs it (under mu) */
    /* In file order: the workers fill units' batches at most `window`
     * units ahead of the one the reading thread hands on. */
    int ordered, give_ids;
    int avx2;                 /* the processor has AVX2 (next_mark) */
    const par_lines *pl;      /* lines, not rows (no context needed) */
    size_t window, taken;     /* taken: units handed on (under mu) */
    int self;                 /* no worker started: the reading thread reads too */
    void *self_consumer;      /* ... into this consumer (par_ops with ordered) */
    /* Row batches and line bytes handed on, kept for the units after them
     * (under mu): memory given back and taken again is faulted in again,
     * page by page, which cost more than the reading. */
    row_batch spare_rb[SPARES];
    buf spare_out[SPARES];
    size_t nspare_rb, nspare_out;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} par;

uint64_t par_chunk_bytes(int ordered)
{
    const char *e = getenv("TALLY_CHUNK_BYTES"); /* the tests cut files into tiny chunks */
    long long v = e ? strtoll(e, NULL, 10) : 0;
    return v > 0 ? (uint64_t)v : ordered ? ORDERED_CHUNK : DEFAULT_CHUNK;
}

int par_threads(int asked)
{
    if (asked > 0) return asked > 256 ? 256 : asked;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

/* A reader at byte start-1 of a chunk skips the rest of the line that
 * holds it (the chunk before reads that line): then it is at the chunk's
 * first own line, numbered 1. */
static int skip_to_own(line_reader *lr)
{
    char *line;
    size_t len;
    int complete, toolong;
    if (lr_next(lr, &line, &len, &complete, &toolong) < 0) {
        lr_close(lr);
        return -1;
    }
    lr->lineno = 0;
    return 0;
}

/* A line reader positioned at the first line that starts at or after
 * `start`. */
static int open_at(line_reader *lr, const char *path, uint64_t start)
{
    if (lr_open(lr, path, SOURCE_MAX_LINE) != 0) return -1;
    if (start == 0) return 0;
    if (fseeko(lr->f, (off_t)(start - 1), SEEK_SET) != 0) {
        lr_close(lr);
        return -1;
    }
    lr->next = start - 1;
    return skip_to_own(lr);
}

/* (at most one per line of a chunk) */
static int add_mark(unit *u, uint64_t off, int what)
{
    if (u->nmarks && u->marks[u->nmarks - 1].off == off) {
        u->marks[u->nmarks - 1].what |= what; /* the same line, met again */
        return 0;
    }
    if (u->nmarks == u->capmarks) {
        size_t nc = u->capmarks ? u->capmarks * 2 : 16;
        mark *n = realloc(u->marks, nc * sizeof *n);
        if (!n) return -1;
        u->marks = n;
        u->capmarks = nc;
    }
    u->marks[u->nmarks++] = (mark){off, what};
    return 0;
}

/* The start of the line holding byte `at`: after the '\n' before it. */
static int64_t line_start(int fd, uint64_t at)
{
    char b[65536];
    uint64_t end = at;
    while (end > 0) {
        uint64_t from = end > sizeof b ? end - sizeof b : 0;
        ssize_t n = pread(fd, b, (size_t)(end - from), (off_t)from);
        if (n != (ssize_t)(end - from)) return -1;
        char *nl = memrchr(b, '\n', (size_t)n);
        if (nl) return (int64_t)(from + (uint64_t)(nl - b) + 1);
        end = from;
        if (at - end > SOURCE_MAX_LINE) return -1;
    }
    return 0;
}

/* The search: the raw bytes of the chunk searched for run_start and for
 * "tag" (a TelemetryLogger line).  A needle that straddles the chunk's end
 * is found by this chunk: it reads a few bytes past it. */
enum { OVER = 16 };

/* The marks the scan looks for: "run_start" and "\"tag\"". */
static int mark_at(const char *b, size_t n, size_t i)
{
    return (n - i >= 9 && memcmp(b + i, "run_start", 9) == 0) || (n - i >= 5 && memcmp(b + i, "\"tag\"", 5) == 0);
}

/* The first mark at or after `from` in b[0..n), or n.  Thirty-two
 * positions at a time, with the compiler's portable vectors: a position
 * can hold a mark only if 'r' is there and 't' eight bytes on, or 't',
 * 'g' and '"' one, three and four bytes on; those few are checked whole.
 * The scan reads every byte once, where searching for each mark on its
 * own read the data twice at a fraction of the speed.  Built twice, for
 * any x86-64 and for AVX2 (twice the bytes a step), and chosen when the
 * read starts (par.avx2); not by an ifunc, which runs before a
 * sanitizer's runtime is ready. */
typedef unsigned char v32 __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) size_t next_mark_in(const char *b, size_t n, size_t from)
{
    size_t i = from;
    for (; n >= 40 && i <= n - 40; i += 32) {
        v32 at0, at1, at3, at4, at8; /* (loaded in place: a function returning a vector would change the ABI) */
        memcpy(&at0, b + i, 32);
        memcpy(&at1, b + i + 1, 32);
        memcpy(&at3, b + i + 3, 32);
        memcpy(&at4, b + i + 4, 32);
        memcpy(&at8, b + i + 8, 32);
        v32 m = (v32)((at0 == 'r') & (at8 == 't')) | (v32)((at1 == 't') & (at3 == 'g') & (at4 == '"'));
        uint64_t w[4];
        memcpy(w, &m, sizeof w);
        if (!(w[0] | w[1] | w[2] | w[3])) continue;
        for (size_t k = 0; k < 32; k++)
            if (m[k] && mark_at(b, n, i + k)) return i + k;
    }
    for (; i < n; i++)
        if (mark_at(b, n, i)) return i;
    return n;
}

static size_t next_mark_any(const char *b, size_t n, size_t from) { return next_mark_in(b, n, from); }
#if defined(__x86_64__)
__attribute__((target("avx2"))) static size_t next_mark_avx2(const char *b, size_t n, size_t from)
{
    return next_mark_in(b, n, from);
}
#define HAVE_AVX2() __builtin_cpu_supports("avx2")
#else
#define next_mark_avx2 next_mark_any
#define HAVE_AVX2() 0
#endif

/* Whether the "tag" at b[i] may be valued step_begin or step_end (what
 * follows it, past the bytes read, cannot be told: maybe). */
static int step_tag(const char *b, size_t n, size_t i)
{
    size_t k = i + 5;
    while (k < n && (b[k] == ' ' || b[k] == '\t')) k++;
    if (k < n && b[k] != ':') return 0;
    k++;
    while (k < n && (b[k] == ' ' || b[k] == '\t')) k++;
    if (k + 6 > n) return 1;
    return memcmp(b + k, "\"step_", 6) == 0;
}

/* Reads u's bytes into b -- from the byte before its start (its reader
 * skips the line that holds it), OVER bytes past its end -- and notes
 * where the lines its marks are in start.  *n: the bytes read.  The read
 * is what the unit's lines are then parsed from. */
static int scan_unit(par *p, unit *u, char *b, size_t *n)
{
    int fd = open(p->files[u->file], O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    /* (a file's last unit: the bytes it had when cut up; more, if it
     * grew since, are read after them) */
    uint64_t end = u->end == UINT64_MAX ? u->start + p->chunk : u->end;
    uint64_t at = u->start ? u->start - 1 : 0, want = end + OVER - at;
    size_t got = 0;
    while (got < want) {
        ssize_t r = pread(fd, b + got, (size_t)(want - got), (off_t)(at + got));
        if (r < 0) {
            close(fd);
            return -1;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    *n = got;
    /* hits at or past the unit's start and before its end */
    size_t from = (size_t)(u->start - at), lim = end - at < got ? (size_t)(end - at) : got;
    int rc = 0;
    for (size_t i = from; rc == 0 && (i = (p->avx2 ? next_mark_avx2 : next_mark_any)(b, got, i)) < lim; i++) {
        int what = b[i] == '"' ? MARK_STEP : MARK_RUN;
        if (what == MARK_STEP && !step_tag(b, got, i)) continue;
        char *nl = memrchr(b, '\n', i);
        int64_t ls = nl ? (int64_t)(at + (uint64_t)(nl - b) + 1) : line_start(fd, at + i);
        /* (no start within 16 MiB: a line too long to be read, which
         * changes no reader's context) */
        if (ls >= 0) rc = add_mark(u, (uint64_t)ls, what);
    }
    close(fd);
    return rc;
}

/* Reads the line that starts at `off` of file f into lr (then lr_close). */
static int line_at(par *p, int f, uint64_t off, line_reader *lr, char **line, size_t *len)
{
    if (open_at(lr, p->files[f], off) != 0) return -1;
    int complete, toolong;
    /* open_at(off) skipped to the line after the one holding off-1: that
     * is the line starting at off, since byte off-1 ends a line */
    if (lr_next(lr, line, len, &complete, &toolong) != 1 || toolong) {
        lr_close(lr);
        return -1;
    }
    return 0;
}

/* The line at `off` read into ctx, as the sequential reader reads it. */
static void replay(par *p, int f, uint64_t off, row_ctx *ctx, json_arena *a)
{
    line_reader lr;
    char *line;
    size_t len;
    if (line_at(p, f, off, &lr, &line, &len) != 0) return;
    json_error je;
    json_arena_reset(a);
    const jv *v;
    row e;
    row_from_line(a, line, len, 0, ctx, &e, &v, &je);
    lr_close(&lr);
}

/* Whether the line at `off` is a step_begin or step_end (a TelemetryLogger
 * line whose tag is one), read into scratch: if so, its effect on the
 * context into ctx. */
static int replay_step(par *p, int f, uint64_t off, row_ctx *ctx, row_ctx *scratch, json_arena *a)
{
    row_ctx_init(scratch, "");
    scratch->have_begin = -1; /* set by a step_begin or step_end only */
    replay(p, f, off, scratch, a);
    if (scratch->have_begin == -1) return 0;
    ctx->have_begin = scratch->have_begin;
    ctx->begin_step = scratch->begin_step;
    ctx->begin_ts = scratch->begin_ts;
    return 1;
}

/* The context of the sequential reader at u's first line, into ctx: the
 * file's cursor moved to u's start (the units before it searched first),
 * replaying each run_start on the way and the last step line. */
static int context_at(par *p, size_t ui, row_ctx *ctx, json_arena *a)
{
    unit *u = &p->u[ui];
    int f = u->file;
    pthread_mutex_lock(&p->mu);
    cursor *c = p->cur[f];
    if (!c && (c = p->cur[f] = calloc(1, sizeof *c))) {
        size_t first = ui;
        while (first > 0 && p->u[first - 1].file == f) first--;
        char run_id[256];
        run_id_from_path(p->files[f], run_id, sizeof run_id);
        row_ctx_init(&c->ctx, run_id);
        c->unit = c->turn = first;
    }
    /* its turn: the units before it in its file have taken their
     * contexts (and so were searched) */
    while (c && c->turn != ui && !atomic_load(&p->stop)) pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    if (!c || atomic_load(&p->stop)) return -1;
    /* run_starts in order, once each */
    size_t su = c->unit, sm = c->mark; /* where this stretch starts */
    for (; c->unit <= ui; c->unit++, c->mark = 0) {
        unit *k = &p->u[c->unit];
        for (; c->mark < k->nmarks && k->marks[c->mark].off < u->start; c->mark++) {
            const mark *m = &k->marks[c->mark];
            if (!(m->what & MARK_RUN) || m->off < c->last) continue; /* (a line met by two units) */
            replay(p, f, m->off, &c->ctx, a);
            c->last = m->off + 1;
        }
        if (c->mark < k->nmarks) break; /* the rest start in u */
    }
    /* of the stretch's step lines, the last that is one (the state a
     * step_begin or step_end leaves does not depend on those before it) */
    for (size_t k = c->unit, j = c->mark; k > su || j > sm;) {
        if (j == 0) {
            k--;
            j = p->u[k].nmarks;
            continue;
        }
        const mark *m = &p->u[k].marks[--j];
        if ((m->what & MARK_STEP) && replay_step(p, f, m->off, &c->ctx, &c->scratch, a)) break;
    }
    *ctx = c->ctx;
    pthread_mutex_lock(&p->mu);
    c->turn = ui + 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

/* Stops every thread, waiting ones included. */
static void stop_all(par *p)
{
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* The bytes of a unit, and what its reader reads after them. */
static size_t unit_buf_size(const par *p) { return p->chunk + OVER + 1 > LR_BLOCK ? p->chunk + OVER + 1 : LR_BLOCK; }

/* A reader of unit ui's lines with its context: a file's later units
 * searched first (into b, unit_buf_size bytes), their lines then read from
 * there; lines (no context) and a file's only unit read from the file. */
static int open_unit(par *p, size_t ui, char *b, line_reader *lr, row_ctx *ctx, json_arena *a)
{
    unit *u = &p->u[ui];
    const char *path = p->files[u->file];
    if (p->pl || u->whole) {
        char run_id[256];
        run_id_from_path(path, run_id, sizeof run_id);
        row_ctx_init(ctx, run_id);
        return open_at(lr, path, u->whole ? 0 : u->start);
    }
    size_t n = 0;
    int rc = scan_unit(p, u, b, &n);
    uint64_t at = u->start ? u->start - 1 : 0;
    if (rc != 0 || context_at(p, ui, ctx, a) != 0 ||
        lr_open_bytes(lr, path, at, b, n, unit_buf_size(p), SOURCE_MAX_LINE) != 0)
        return -1;
    return u->start ? skip_to_own(lr) : 0;
}

/* A unit's row batch and line bytes: ones handed on before, if any. */
static void take_spares(par *p, unit *u)
{
    pthread_mutex_lock(&p->mu);
    if (p->nspare_rb) u->rb = p->spare_rb[--p->nspare_rb];
    if (p->nspare_out) u->out = p->spare_out[--p->nspare_out];
    pthread_mutex_unlock(&p->mu);
}

/* Its row batch and line bytes handed on: kept for the units after it. */
static void give_spares(par *p, unit *u)
{
    row_batch_clear(&u->rb);
    buf_reset(&u->out);
    pthread_mutex_lock(&p->mu);
    if (p->nspare_rb < SPARES && u->rb.cap) p->spare_rb[p->nspare_rb++] = u->rb;
    else row_batch_free(&u->rb);
    if (p->nspare_out < SPARES && u->out.cap) p->spare_out[p->nspare_out++] = u->out;
    else buf_free(&u->out);
    pthread_mutex_unlock(&p->mu);
    memset(&u->rb, 0, sizeof u->rb);
    memset(&u->out, 0, sizeof u->out);
}

static void read_unit(par *p, size_t ui, void *consumer, char *b)
{
    unit *u = &p->u[ui];
    if (p->ordered) take_spares(p, u);
    json_arena a;
    json_arena_init(&a, (size_t)64 << 20);
    row_ctx ctx;
    line_reader lr;
    if (open_unit(p, ui, b, &lr, &ctx, &a) != 0) {
        u->failed = 1;
        json_arena_free(&a);
        stop_all(p); /* (a unit after it may wait for its context) */
        return;
    }
    uint64_t end = u->whole ? UINT64_MAX : u->end;
    char *line;
    size_t len;
    line_info li = {.give_ids = p->give_ids};
    int r = 0;
    while (!atomic_load_explicit(&p->stop, memory_order_relaxed) && lr.next < end &&
           (r = lr_next(&lr, &line, &len, &li.complete, &li.toolong)) == 1) {
        u->st.lines++;
        li.offset = lr.offset;
        if (p->pl) {
            if (p->pl->line(&a, line, len, &li, lr.lineno, &u->out)) {
                u->nomem = 1;
                stop_all(p);
                break;
            }
            continue;
        }
        row e;
        char idbuf[SOURCE_ID_LEN], unreported[sizeof u->bad[0].why];
        /* a bad line's reason goes where it is kept, while lines are reported */
        char *why = u->nbad < SOURCE_MAX_REPORTED ? u->bad[u->nbad].why : unreported;
        int got = source_line(&a, &ctx, line, len, &li, p->o, &e, idbuf, why, sizeof unreported);
        if (got == LINE_TORN) u->st.torn++;
        if (got == LINE_BAD) {
            if (u->nbad < SOURCE_MAX_REPORTED) u->bad[u->nbad++].lineno = lr.lineno;
            u->st.bad++;
        }
        if (got != LINE_EVENT) continue;
        u->st.events++;
        /* In file order: kept for the reading thread; else to this thread's own consumer. */
        int stop = p->ops ? p->ops->row(consumer, &e) : 0;
        if (p->ordered && !stop) stop = u->nomem = row_batch_add(&u->rb, &e) != 0;
        if (stop) {
            stop_all(p);
            break;
        }
    }
    if (r < 0) u->failed = 1;
    lr_close(&lr);
    json_arena_free(&a);
}

typedef struct worker {
    par *p;
    void *consumer;
    pthread_t t;
} worker;

/* In file order, unit i waits until the reading thread is near it. */
static int wait_turn(par *p, size_t i)
{
    pthread_mutex_lock(&p->mu);
    while (i >= p->taken + p->window && !atomic_load(&p->stop)) pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return !atomic_load(&p->stop);
}

static void *work(void *arg)
{
    worker *w = arg;
    par *p = w->p;
    char *b = malloc(unit_buf_size(p));
    for (;;) {
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->nu) break;
        unit *u = &p->u[i];
        if (p->ordered && !wait_turn(p, i)) break;
        if (b) read_unit(p, i, w->consumer, b);
        pthread_mutex_lock(&p->mu);
        if (!b) { /* no memory to read it: the read stops */
            u->failed = 1;
            atomic_store(&p->stop, 1);
        }
        u->done = 1;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    free(b);
    return NULL;
}

/* The read with n threads.  In file order the calling thread only hands
 * rows on (hand_on), the n others read; else it is a worker too. */
static int hand_on(par *p, row_fn fn, void *ud, source_stats *st, char *err, size_t errlen);

static int run_threads(par *p, worker *ws, int n, row_fn fn, void *ud, source_stats *st, char *err, size_t errlen)
{
    atomic_store(&p->next, 0);
    int rc = 0;
    char started[257] = {0};
    /* one that cannot start leaves its share to the others */
    for (int i = p->ordered ? 0 : 1; i < n; i++) started[i] = pthread_create(&ws[i].t, NULL, work, &ws[i]) == 0;
    if (p->ordered) {
        int any = 0;
        for (int i = 0; i < n; i++) any |= started[i];
        p->self = !any; /* no thread at all: each unit read here, then handed on */
        rc = hand_on(p, fn, ud, st, err, errlen);
    } else {
        work(&ws[0]);
    }
    for (int i = 0; i < n; i++)
        if (started[i]) pthread_join(ws[i].t, NULL);
    return rc;
}

static int make_units(par *p, uint64_t chunk)
{
    size_t cap = 0;
    for (size_t f = 0; f < p->nfiles; f++) {
        struct stat sb;
        uint64_t size = stat(p->files[f], &sb) == 0 && S_ISREG(sb.st_mode) ? (uint64_t)sb.st_size : 0;
        uint64_t n = size >= 2 * chunk ? (size + chunk - 1) / chunk : 1;
        for (uint64_t k = 0; k < n; k++) {
            if (p->nu == cap) {
                size_t nc = cap ? cap * 2 : 64;
                unit *u = realloc(p->u, nc * sizeof *u);
                if (!u) return -1;
                p->u = u;
                cap = nc;
            }
            unit *u = &p->u[p->nu++];
            memset(u, 0, sizeof *u);
            buf_init(&u->rb.bytes, ROWS_MAX_BYTES);
            buf_init(&u->out, ROWS_MAX_BYTES);
            u->file = (int)f;
            u->start = k * chunk;
            u->end = k + 1 == n ? UINT64_MAX : (k + 1) * chunk;
            u->whole = n == 1;
        }
    }
    return 0;
}

/* The lines of u's file before u (from `before`, the count up to the
 * unit before u), and the count after u. */
static uint64_t lines_before(par *p, unit *u, uint64_t *before)
{
    if (u == p->u || u->file != u[-1].file) *before = 0;
    uint64_t n = *before;
    *before += u->st.lines;
    return n;
}

/* A unit's counts and first bad lines (numbered in its file: `before`
 * lines of it come before the unit) into st. */
static void unit_report(par *p, unit *u, source_stats *st, uint64_t before)
{
    st->lines += u->st.lines;
    st->events += u->st.events;
    st->torn += u->st.torn;
    for (int b = 0; b < u->nbad; b++) source_report(st, p->files[u->file], before + u->bad[b].lineno, u->bad[b].why);
    st->reported += (int)(u->st.bad - (uint64_t)u->nbad);
    st->bad += u->st.bad - (uint64_t)u->nbad;
}

static int hand_on(par *p, row_fn fn, void *ud, source_stats *st, char *err, size_t errlen)
{
    uint64_t before = 0;
    int rc = 0;
    char *b = p->self ? malloc(unit_buf_size(p)) : NULL;
    if (p->self && !b) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < p->nu && !rc; i++) {
        unit *u = &p->u[i];
        if (p->self) read_unit(p, i, p->self_consumer, b);
        pthread_mutex_lock(&p->mu);
        while (!p->self && !u->done) pthread_cond_wait(&p->cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
        if (u->failed || u->nomem) {
            snprintf(err, errlen, u->nomem ? "out of memory" : "cannot read %s", p->files[u->file]);
            rc = -1;
        } else if (p->pl) {
            int last = i + 1 == p->nu || u[1].file != u->file;
            rc = p->pl->take(ud, &(par_out){u->file, &u->out, lines_before(p, u, &before), u->st.lines, last}) ? 1 : 0;
        } else {
            unit_report(p, u, st, lines_before(p, u, &before));
            row_batch_fix(&u->rb);
            if (!p->ops && p->o->rows) { /* the chunk's rows at once */
                rc = p->o->rows(ud, u->rb.rows, u->rb.n) ? 1 : 0;
            } else {
                row_fn take = p->ops ? p->ops->ordered : fn; /* with par_ops: the ordered part only */
                for (size_t k = 0; k < u->rb.n && !rc; k++) rc = take(ud, &u->rb.rows[k]) ? 1 : 0;
            }
        }
        give_spares(p, u);
        pthread_mutex_lock(&p->mu);
        p->taken = i + 1;
        if (rc) atomic_store(&p->stop, 1);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    free(b);
    return rc < 0 ? -1 : 0; /* a consumer's stop is not an error */
}

static int read_par(char **files, size_t nfiles, const source_opts *o, const par_ops *ops, const par_lines *pl,
                    row_fn fn, void *ud, int give_ids, source_stats *st, char *err, size_t errlen)
{
    par p;
    memset(&p, 0, sizeof p);
    p.files = files;
    p.nfiles = nfiles;
    p.o = o;
    p.ops = ops;
    p.pl = pl;
    p.ordered = !ops || ops->ordered;
    p.give_ids = give_ids;
    p.avx2 = HAVE_AVX2();
    p.chunk = par_chunk_bytes(p.ordered);
    int nt = par_threads(o->threads), rc = -1;
    p.window = 2 * (size_t)nt;
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv, NULL);
    worker *ws = calloc((size_t)nt, sizeof *ws);
    p.cur = calloc(nfiles ? nfiles : 1, sizeof *p.cur);
    if (!ws || !p.cur || make_units(&p, p.chunk)) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (int i = 0; i < nt; i++) ws[i].p = &p;
    if (p.ordered && !ops) {
        rc = run_threads(&p, ws, nt, fn, ud, st, err, errlen);
        goto out;
    }
    for (int i = 0; i < nt; i++) {
        ws[i].consumer = ops->fork(ud);
        if (!ws[i].consumer) {
            for (int k = 0; k < i; k++) ops->join(ud, ws[k].consumer);
            snprintf(err, errlen, "out of memory");
            goto out;
        }
    }
    p.self_consumer = ws[0].consumer;
    int handed = run_threads(&p, ws, nt, fn, ud, st, err, errlen), joined = 0;
    for (int i = 0; i < nt; i++) joined |= ops->join(ud, ws[i].consumer);
    if (p.ordered) {
        /* rows handed on in file order, their counts with them */
        rc = handed ? -1 : joined ? -1 : 0;
        if (joined && !handed) snprintf(err, errlen, "out of memory");
        goto out;
    }
    uint64_t before = 0;
    for (size_t i = 0; i < p.nu; i++) {
        if (p.u[i].failed) {
            snprintf(err, errlen, "cannot read %s", files[p.u[i].file]);
            goto out;
        }
        unit_report(&p, &p.u[i], st, lines_before(&p, &p.u[i], &before));
    }
    rc = joined ? -1 : 0;
    if (joined) snprintf(err, errlen, "out of memory");
out:
    for (size_t i = 0; i < p.nu; i++) {
        free(p.u[i].marks);
        row_batch_free(&p.u[i].rb);
        buf_free(&p.u[i].out);
    }
    for (size_t k = 0; k < p.nspare_rb; k++) row_batch_free(&p.spare_rb[k]);
    for (size_t k = 0; k < p.nspare_out; k++) buf_free(&p.spare_out[k]);
    for (size_t f = 0; p.cur && f < nfiles; f++) free(p.cur[f]);
    free(p.cur);
    free(p.u);
    free(ws);
    pthread_cond_destroy(&p.cv);
    pthread_mutex_destroy(&p.mu);
    return rc;
}

int source_read_par(char **files, size_t nfiles, const source_opts *o, const par_ops *ops, row_fn fn, void *ud,
                    int give_ids, source_stats *st, char *err, size_t errlen)
{
    return read_par(files, nfiles, o, ops, NULL, fn, ud, give_ids, st, err, errlen);
}

int par_read_lines(char **files, size_t nfiles, int threads, const par_lines *pl, void *ud, char *err, size_t errlen)
{
    source_opts o = {0};
    o.threads = threads;
    source_stats st = {0};
    return read_par(files, nfiles, &o, NULL, pl, NULL, ud, 0, &st, err, errlen);
}
