/*
 * par -- JSONL files read by every core (see par.h).
 *
 * In file order (no par_ops), threads read chunks of 1 MiB into row
 * batches (or par_lines' bytes), at most `window` chunks ahead of the one
 * the calling thread is handing on; it waits for each chunk in turn.  A
 * big file that must be read whole is read by the calling thread itself,
 * line by line, when its turn comes.
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
 * wall time from its step_begin.  So, first, every chunk is scanned for
 * run_start lines (kept, with their offsets) and for tagged lines; then a
 * chunk's reader starts from the context the run_starts before it make --
 * exactly the sequential reader's, since nothing else changes it.  A file
 * with tagged lines (their step_begin pairs may cross chunks) is read by
 * one thread from its start.
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

#define MAX_CONTEXT_LINES 4096 /* run_starts per file beyond which the file is read by one thread */
#define DEFAULT_CHUNK ((uint64_t)8 << 20)
/* In file order a chunk's rows wait in memory (about 2.5 times its bytes)
 * until handed on: smaller chunks keep that to a few MB per thread. */
#define ORDERED_CHUNK ((uint64_t)1 << 20)
/* The strings of one unit's rows: its lines, and each row's run name from
 * the context (a cap far above what a chunk of real lines needs). */
#define ROWS_MAX_BYTES ((size_t)256 << 20)

typedef struct ctxline {
    uint64_t off;
    char *line;
    size_t len;
} ctxline;

typedef struct badline {
    uint64_t lineno;          /* within the unit */
    char why[160];
} badline;

typedef struct unit {
    int file;
    uint64_t start, end;      /* end: UINT64_MAX = to the end of the file */
    int whole;                /* read from the start with a fresh context */
    int skip;                 /* its file is read whole by another unit */
    /* the scan */
    ctxline *ctx;
    size_t nctx;
    int tagged, too_many;
    /* the read */
    source_stats st;
    badline bad[SOURCE_MAX_REPORTED];
    int nbad;
    int failed;               /* could not be read */
    /* in file order (par.ordered) */
    row_batch rb;             /* its events, until the reading thread takes them */
    buf out;                  /* par_lines: what its lines gave */
    int nomem;
    int seq;                  /* a big file read whole: by the reading thread itself */
    int done;                 /* under par.mu */
} unit;

typedef struct par {
    char **files;
    size_t nfiles;
    const source_opts *o;
    const par_ops *ops;
    unit *u;
    size_t nu;
    _Atomic size_t next;
    _Atomic int stop;
    int phase;                /* 1 scan, 2 read */
    const ctxline ***fctx;    /* per file: its run_start lines in file order, each once */
    size_t *fnctx;
    /* In file order: the workers fill units' batches at most `window`
     * units ahead of the one the reading thread hands on. */
    int ordered, give_ids;
    const par_lines *pl;      /* lines, not rows (no context needed) */
    size_t window, taken;     /* taken: units handed on (under mu) */
    int self;                 /* no worker started: the reading thread reads too */
    void *self_consumer;      /* ... into this consumer (par_ops with ordered) */
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
    char *line;
    size_t len;
    int complete, toolong;
    /* the rest of the line holding byte start-1: the chunk before reads it */
    if (lr_next(lr, &line, &len, &complete, &toolong) < 0) {
        lr_close(lr);
        return -1;
    }
    lr->lineno = 0;
    return 0;
}

/* Keeps the whole line that starts at `off` (a run_start). */
static int keep_line(par *p, unit *u, uint64_t off, size_t *cap)
{
    if (u->nctx && u->ctx[u->nctx - 1].off == off) return 0; /* the same line, met again */
    if (u->nctx == MAX_CONTEXT_LINES) return -1;
    if (u->nctx == *cap) {
        size_t nc = *cap ? *cap * 2 : 4;
        ctxline *n = realloc(u->ctx, nc * sizeof *n);
        if (!n) return -1;
        u->ctx = n;
        *cap = nc;
    }
    line_reader lr;
    if (open_at(&lr, p->files[u->file], off) != 0) return -1;
    char *line;
    size_t len;
    int complete, toolong, rc = -1;
    /* open_at(off) skipped to the line after the one holding off-1: that
     * is the line starting at off, since byte off-1 ends a line */
    if (lr_next(&lr, &line, &len, &complete, &toolong) == 1 && !toolong) {
        char *copy = malloc(len ? len : 1);
        if (copy) {
            memcpy(copy, line, len);
            u->ctx[u->nctx++] = (ctxline){off, copy, len};
            rc = 0;
        }
    }
    lr_close(&lr);
    return rc;
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

/* The scan: the raw bytes of the chunk searched for run_start (each such
 * line kept whole, wherever it starts) and for tagged lines.  A needle
 * that straddles the chunk's end is found by this chunk: it reads a few
 * bytes past it. */
enum { BLOCK = 1 << 20, OVER = 16 };

/* The marks the scan looks for: "run_start" and "\"tag\"". */
static int mark_at(const char *b, size_t n, size_t i)
{
    return (n - i >= 9 && memcmp(b + i, "run_start", 9) == 0) || (n - i >= 5 && memcmp(b + i, "\"tag\"", 5) == 0);
}

/* The first mark at or after `from` in b[0..n), or n.  Sixteen positions
 * at a time, with the compiler's portable vectors: a position can hold a
 * mark only if 'r' is there and 't' eight bytes on, or 't', 'g' and '"'
 * one, three and four bytes on; those few are checked whole.  The scan
 * reads every byte once, where searching for each mark on its own read
 * the data twice at a fraction of the speed. */
typedef unsigned char v16 __attribute__((vector_size(16)));
static inline v16 load16(const char *p)
{
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static size_t next_mark(const char *b, size_t n, size_t from)
{
    size_t i = from;
    for (; n >= 24 && i <= n - 24; i += 16) {
        v16 m = (v16)((load16(b + i) == 'r') & (load16(b + i + 8) == 't')) |
                (v16)((load16(b + i + 1) == 't') & (load16(b + i + 3) == 'g') & (load16(b + i + 4) == '"'));
        uint64_t lo, hi;
        memcpy(&lo, &m, 8);
        memcpy(&hi, (const char *)&m + 8, 8);
        if (!(lo | hi)) continue;
        for (size_t k = 0; k < 16; k++)
            if (m[k] && mark_at(b, n, i + k)) return i + k;
    }
    for (; i < n; i++)
        if (mark_at(b, n, i)) return i;
    return n;
}

static void scan_unit(par *p, unit *u, char *b)
{
    int fd = open(p->files[u->file], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        u->failed = 1;
        return;
    }
    size_t cap = 0;
    for (uint64_t pos = u->start; b && pos < u->end && !u->too_many;) {
        uint64_t want = BLOCK + OVER;
        if (u->end != UINT64_MAX && u->end + OVER - pos < want) want = u->end + OVER - pos;
        ssize_t n = pread(fd, b, (size_t)want, (off_t)pos);
        if (n < 0) {
            u->failed = 1;
            break;
        }
        if (n == 0) break;
        /* hits that start in [pos, pos + BLOCK) and before the chunk's end */
        uint64_t lim = pos + BLOCK < u->end ? pos + BLOCK : u->end;
        for (size_t at = 0; (at = next_mark(b, (size_t)n, at)) < (size_t)n; at++) {
            uint64_t off = pos + at;
            if (off >= lim) break;
            if (b[at] == '"') {
                u->tagged = 1;
                continue;
            }
            char *nl = memrchr(b, '\n', at);
            int64_t ls = nl ? (int64_t)(pos + (uint64_t)(nl - b) + 1) : line_start(fd, off);
            if (ls < 0 || keep_line(p, u, (uint64_t)ls, &cap) != 0) {
                u->too_many = 1;
                break;
            }
        }
        if ((size_t)n < want) break;
        pos += BLOCK;
    }
    if (!b) u->too_many = 1;
    close(fd);
}

static int by_offset(const void *a, const void *b)
{
    const ctxline *x = *(const ctxline *const *)a, *y = *(const ctxline *const *)b;
    return (x->off > y->off) - (x->off < y->off);
}

/* Per file, after the scan: its run_start lines in the file's order,
 * each once (a line may be met by two chunks). */
static int sort_context(par *p)
{
    p->fctx = calloc(p->nfiles, sizeof *p->fctx);
    p->fnctx = calloc(p->nfiles, sizeof *p->fnctx);
    if (!p->fctx || !p->fnctx) return -1;
    for (size_t i = 0; i < p->nu; i++) p->fnctx[p->u[i].file] += p->u[i].nctx;
    for (size_t f = 0; f < p->nfiles; f++) {
        if (!p->fnctx[f]) continue;
        p->fctx[f] = malloc(p->fnctx[f] * sizeof **p->fctx);
        if (!p->fctx[f]) return -1;
        p->fnctx[f] = 0;
    }
    for (size_t i = 0; i < p->nu; i++)
        for (size_t j = 0; j < p->u[i].nctx; j++) p->fctx[p->u[i].file][p->fnctx[p->u[i].file]++] = &p->u[i].ctx[j];
    for (size_t f = 0; f < p->nfiles; f++) {
        const ctxline **v = p->fctx[f];
        size_t n = p->fnctx[f], k = 0;
        if (!n) continue;
        qsort(v, n, sizeof *v, by_offset);
        for (size_t i = 0; i < n; i++)
            if (!k || v[i]->off != v[k - 1]->off) v[k++] = v[i];
        p->fnctx[f] = k;
    }
    return 0;
}

/* The context of the sequential reader at u's first line: the file's
 * run_starts before it, replayed in order. */
static void context_at(par *p, unit *u, row_ctx *ctx, json_arena *a)
{
    char run_id[256];
    run_id_from_path(p->files[u->file], run_id, sizeof run_id);
    row_ctx_init(ctx, run_id);
    if (u->whole) return;
    const ctxline **v = p->fctx[u->file];
    for (size_t i = 0; i < p->fnctx[u->file] && v[i]->off < u->start; i++) {
        json_error je;
        json_arena_reset(a);
        jv *j = json_parse(a, v[i]->line, v[i]->len, &je);
        row e;
        if (j && j->type == JV_OBJ) row_from_json(j, ctx, &e);
    }
}

static void read_unit(par *p, unit *u, void *consumer)
{
    json_arena a;
    json_arena_init(&a, (size_t)64 << 20);
    row_ctx ctx;
    if (!p->pl) context_at(p, u, &ctx, &a);
    line_reader lr;
    if (u->failed || open_at(&lr, p->files[u->file], u->whole ? 0 : u->start) != 0) {
        u->failed = 1;
        json_arena_free(&a);
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
                atomic_store(&p->stop, 1);
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
            atomic_store(&p->stop, 1);
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
    char *block = p->phase == 1 ? malloc(BLOCK + OVER) : NULL;
    for (;;) {
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->nu) break;
        unit *u = &p->u[i];
        if (p->phase == 1) {
            if (!u->whole) scan_unit(p, u, block);
            continue;
        }
        if (p->ordered && !wait_turn(p, i)) break;
        if (!u->skip && !u->seq) read_unit(p, u, w->consumer);
        if (p->ordered) {
            pthread_mutex_lock(&p->mu);
            u->done = 1;
            pthread_cond_broadcast(&p->cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
    free(block);
    return NULL;
}

/* Phase 1 or 2 with n threads.  In file order the calling thread only
 * hands rows on (hand_on), the n others read; else it is a worker too. */
static int hand_on(par *p, row_fn fn, void *ud, source_stats *st, char *err, size_t errlen);

static int run_phase(par *p, worker *ws, int n, int phase, row_fn fn, void *ud, source_stats *st, char *err,
                     size_t errlen)
{
    p->phase = phase;
    atomic_store(&p->next, 0);
    int ordered = phase == 2 && p->ordered, rc = 0;
    char started[257] = {0};
    /* one that cannot start leaves its share to the others */
    for (int i = ordered ? 0 : 1; i < n; i++) started[i] = pthread_create(&ws[i].t, NULL, work, &ws[i]) == 0;
    if (ordered) {
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
    for (size_t i = 0; i < p->nu && !rc; i++) {
        unit *u = &p->u[i];
        if (p->self && !u->skip && !u->seq) read_unit(p, u, p->self_consumer);
        pthread_mutex_lock(&p->mu);
        while (!p->self && !u->done) pthread_cond_wait(&p->cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
        if (u->seq) {
            /* A big file read whole: here, line by line, not into memory. */
            rc = source_read_jsonl(p->files[u->file], p->o, fn, ud, st, err, errlen, p->give_ids);
        } else if (u->failed || u->nomem) {
            snprintf(err, errlen, u->nomem ? "out of memory" : "cannot read %s", p->files[u->file]);
            rc = -1;
        } else if (p->pl) {
            int last = i + 1 == p->nu || u[1].file != u->file;
            rc = p->pl->take(ud, &(par_out){u->file, &u->out, lines_before(p, u, &before), u->st.lines, last}) ? 1 : 0;
        } else if (!u->skip) {
            unit_report(p, u, st, lines_before(p, u, &before));
            row_batch_fix(&u->rb);
            row_fn take = p->ops ? p->ops->ordered : fn; /* with par_ops: the ordered part only */
            for (size_t k = 0; k < u->rb.n && !rc; k++) rc = take(ud, &u->rb.rows[k]) ? 1 : 0;
        }
        row_batch_free(&u->rb);
        buf_free(&u->out);
        pthread_mutex_lock(&p->mu);
        p->taken = i + 1;
        if (rc) atomic_store(&p->stop, 1);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
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
    int nt = par_threads(o->threads), rc = -1;
    p.window = 2 * (size_t)nt;
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv, NULL);
    char *whole = NULL; /* per file: read by one unit */
    worker *ws = calloc((size_t)nt, sizeof *ws);
    if (!ws || make_units(&p, par_chunk_bytes(p.ordered))) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (int i = 0; i < nt; i++) ws[i].p = &p;
    if (!pl) run_phase(&p, ws, nt, 1, NULL, NULL, NULL, NULL, 0); /* lines need no context */
    /* A file whose chunks met tagged lines, or too many runs, or could not
     * be scanned: read by its first unit, from its start, alone (in file
     * order, by the reading thread: a big file is not kept in memory). */
    whole = calloc(nfiles ? nfiles : 1, 1);
    if (!whole) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < p.nu; i++)
        if (!p.u[i].whole && (p.u[i].tagged || p.u[i].too_many || p.u[i].failed)) whole[p.u[i].file] = 1;
    for (size_t i = 0; i < p.nu; i++) {
        unit *u = &p.u[i];
        if (!whole[u->file]) continue;
        u->whole = u->start == 0;
        u->skip = !u->whole;
        u->seq = u->whole && p.ordered;
        u->failed = 0;
    }
    if (sort_context(&p)) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    if (p.ordered && !ops) {
        rc = run_phase(&p, ws, nt, 2, fn, ud, st, err, errlen);
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
    int handed = run_phase(&p, ws, nt, 2, fn, ud, st, err, errlen), joined = 0;
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
        for (size_t k = 0; k < p.u[i].nctx; k++) free(p.u[i].ctx[k].line);
        free(p.u[i].ctx);
        row_batch_free(&p.u[i].rb);
        buf_free(&p.u[i].out);
    }
    for (size_t f = 0; p.fctx && f < nfiles; f++) free(p.fctx[f]);
    free(p.fctx);
    free(p.fnctx);
    free(p.u);
    free(ws);
    free(whole);
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
