/*
 * sink_sqlite -- the events database (see store.c, docs/schema.md).
 *
 * Why a thread of its own.  Inserting a row costs SQLite about 1.5 us
 * here, three times what the writer thread spends encoding the event; done
 * one after the other on the writer thread they cap a program near 400,000
 * events a second and leave the second core idle.  So the writer thread
 * only turns each record into a row and copies it into a batch, and this
 * sink's database thread inserts batches: the two overlap.  Nothing here
 * is ever on the recording path.
 *
 * Batches, and why this sink cannot hurt the others.  The writer fills
 * one batch while the database thread commits the other, one transaction
 * each.  If the database is still busy with the previous batch when the
 * writer ends a batch, the writer keeps filling the same one (so, under
 * load, several flush batches go into one transaction: group commit).  The
 * writer never waits for the database thread while events flow: when the
 * batch being filled reaches BATCH_MAX_ROWS / BATCH_MAX_BYTES / its cells'
 * cap and the database thread is still busy (another process holds the
 * write lock, the disk is slow), the writer waits for it only while no
 * recording queue is 3/4 full and for at most BACKPRESSURE_MS (a burst is
 * absorbed by the queues, delaying the other sinks by at most that); past
 * that, further events are dropped by this sink and counted as its own
 * losses, and the JSONL file and every other sink carry on.  A flush
 * waits for its events at most SYNC_WAIT_MS; close waits until the
 * database thread has finished (each try is bounded by the busy
 * timeout).
 *
 * Failures.  A batch that cannot get the lock within BUSY_RETRY_MS (tries
 * of the busy timeout each), or fails to insert, is rolled back and its
 * events counted as lost (the
 * JSONL file, when configured, remains the record).  A database that
 * cannot be opened is tried again at most every 5 s.  Retention runs here
 * every TRIM_EVERY transactions.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "record.h"
#include "rollup.h"
#include "row.h"
#include "store.h"

#define TRIM_EVERY 100
#define BATCH_MAX_ROWS 65536
#define BATCH_MAX_BYTES ((size_t)32 << 20)
#define BATCH_MAX_CELLS 16384
#define SYNC_WAIT_MS 3000      /* a flush waits this long for the database, at most */
#define BUSY_RETRY_MS 10000     /* a batch waits this long, in all, for another process's lock */
#define BACKPRESSURE_MS BUSY_RETRY_MS /* a full batch waits this long for the database, at most */
#define COMMIT_WAIT_MS 1000      /* a commit waits this long for a busy database thread, at most */

typedef struct batch {
    row_batch rb;             /* the rows, with their strings */
    rollup *cells;            /* the rows' rollup, counted by the writer thread */
    int full;                 /* cells reached their cap: hand over before the next row */
    int deferred;             /* a commit already left this batch to grow */
} batch;

typedef struct sqlsink {
    char *path;
    struct tally *h;
    store *st;                /* used by the database thread only (and at open) */
    int warned_open, warned_write;
    int64_t last_try_ns;
    uint64_t commits;
    batch b[2], *fill, *work; /* the writer fills one; the database thread commits the other */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, idle_cv;
    int running, busy, stop;
    int stalled;              /* a commit waited for the database thread in vain */
    _Atomic uint64_t lost;
} sqlsink;

/* Copies r with its strings into the batch.  The rollup is counted here,
 * on the writer thread, which has time to spare, not on the database
 * thread, which has none. */
static int batch_add(batch *b, const row *r)
{
    if (row_batch_add(&b->rb, r)) return -1;
    int full = rollup_add(b->cells, r);
    if (full < 0) return -1;
    b->full = full;
    return 0;
}

static void batch_clear(batch *b)
{
    row_batch_clear(&b->rb);
    rollup_clear(b->cells);
    b->full = b->deferred = 0;
}

/* ---- the database thread ------------------------------------------------------------- */

static void try_open(sqlsink *q)
{
    if (!sink_retry_due(&q->last_try_ns, tally__mono_ns())) return;
    char err[512];
    /* As for the JSONL file: a missing directory is created, and a new
     * database is private when it will hold request text. */
    tally__mkdir_p(q->path, 1);
    int fd = open(q->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, tally__file_mode(q->h));
    if (fd >= 0) close(fd);
    q->st = store_open(q->path, STORE_CREATE | STORE_CHECKPOINTER, err, sizeof err);
    if (!q->st) tally__warn_once(q->h, &q->warned_open, "%s (events are counted as lost)", err);
}

static void retention(sqlsink *q)
{
    struct tally *h = q->h;
    if (h->retention_max_age_s <= 0 && h->retention_max_rows <= 0) return;
    double before = h->retention_max_age_s > 0 ? (double)time(NULL) - (double)h->retention_max_age_s : 0;
    if (store_trim(q->st, before, h->retention_max_rows) < 0)
        tally__log(h, TALLY_LOG_WARN, "retention trim of %s failed: %s", q->path, store_errmsg(q->st));
}

/* One try at the batch's transaction: 0, or -1 (rolled back) with `what`
 * failed. */
static int try_batch(sqlsink *q, batch *b, const char **what)
{
    *what = "write";
    if (store_begin(q->st) != 0) goto fail;
    for (size_t i = 0; i < b->rb.n; i++) {
        row *r = &b->rb.rows[i];
        if ((SV_IS(r->kind, "run_start") || SV_IS(r->kind, "run_end")) &&
            store_run_line(q->st, r->run_id, SV_IS(r->kind, "run_end"), r->json) != 0)
            goto fail;
    }
    if (store_insert_rows(q->st, b->rb.rows, b->rb.n, STORE_COUNTED, NULL) != 0) goto fail;
    if (store_add_cells(q->st, b->cells) != 0) goto fail;
    *what = "commit to";
    if (store_commit(q->st) != 0) goto fail;
    return 0;
fail:
    store_rollback(q->st);
    return -1;
}

/* One transaction for the batch; returns how many of its events were lost.
 * Another process holding the write lock past the busy timeout (a big
 * transaction of its own, a slow disk) is waited out, up to BUSY_RETRY_MS
 * in all: this thread is off every program path, and meanwhile the writer
 * fills the other batch. */
static uint64_t commit_batch(sqlsink *q, batch *b)
{
    if (!b->rb.n) return 0;
    if (!q->st) try_open(q);
    if (!q->st) return b->rb.n;
    row_batch_fix(&b->rb);
    const char *what;
    int64_t give_up = tally__mono_ns() + (int64_t)BUSY_RETRY_MS * 1000000;
    for (;;) {
        if (try_batch(q, b, &what) == 0) {
            if (++q->commits % TRIM_EVERY == 0) retention(q);
            return 0;
        }
        if (!store_busy(q->st) || tally__mono_ns() >= give_up) break;
    }
    tally__warn_once(q->h, &q->warned_write, "cannot %s %s: %s (events are counted as lost)", what, q->path,
                     store_errmsg(q->st));
    return b->rb.n;
}

static void *db_main(void *arg)
{
    sqlsink *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->busy && !q->stop) pthread_cond_wait(&q->work_cv, &q->mu);
        if (!q->busy) break;
        batch *b = q->work;
        pthread_mutex_unlock(&q->mu);
        uint64_t lost = commit_batch(q, b);
        if (lost) atomic_fetch_add(&q->lost, lost);
        batch_clear(b);
        pthread_mutex_lock(&q->mu);
        q->busy = 0;
        pthread_cond_broadcast(&q->idle_cv);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

static int start_thread(sqlsink *q)
{
    if (q->running) return 0;
    /* Like the writer, it blocks every signal (a write past RLIMIT_FSIZE
     * fails with EFBIG instead of raising SIGXFSZ in the program). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&q->th, NULL, db_main, q);
    if (rc == 0) pthread_setname_np(q->th, "tally-db");
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    q->running = rc == 0;
    return rc == 0 ? 0 : -1;
}

/* Hands the filled batch to the database thread (under mu; it is idle). */
static void hand_over(sqlsink *q)
{
    batch *t = q->work;
    q->work = q->fill;
    q->fill = t;
    q->busy = 1;
    pthread_cond_signal(&q->work_cv);
}

/* ---- the sink --------------------------------------------------------------------------- */

/* Waits (under mu) until the database thread is idle, at most until
 * `deadline_ns` (0: no limit); returns 1 when it is idle. */
static int wait_idle(sqlsink *q, int64_t deadline_ns)
{
    while (q->busy) {
        if (!deadline_ns) {
            pthread_cond_wait(&q->idle_cv, &q->mu);
            continue;
        }
        int64_t left = deadline_ns - tally__mono_ns();
        if (left <= 0) return 0;
        struct timespec dl = tally__deadline(left);
        pthread_cond_timedwait(&q->idle_cv, &q->mu, &dl);
    }
    return 1;
}

/* Waits (under mu) for the database thread while that costs no event:
 * at most BACKPRESSURE_MS, and not once a recording queue is 3/4 full
 * (the writer must go and drain it).  Returns 1 when it is idle. */
static int wait_harmless(sqlsink *q, int ms)
{
    int64_t deadline = tally__mono_ns() + (int64_t)ms * 1000000;
    while (q->busy && !tally__rings_pressed(q->h)) {
        int64_t slice = tally__mono_ns() + 2000000;
        if (slice > deadline) slice = deadline;
        if (!wait_idle(q, slice) && tally__mono_ns() >= deadline) break;
    }
    return !q->busy;
}

/* The writer's row for the event (its json is the line), copied into the
 * batch: nothing is re-read from the line. */
static int sql_write(sink *s, const wev *ev, const row *r, const char *line, size_t len)
{
    (void)ev;
    (void)line;
    (void)len;
    sqlsink *q = s->state;
    if (!r) return -1;
    if (q->fill->rb.n >= BATCH_MAX_ROWS || q->fill->rb.bytes.len >= BATCH_MAX_BYTES || q->fill->full) {
        /* Full: hand it over once the database thread is free.  The writer
         * may wait for it only while that costs nobody an event: at most
         * BACKPRESSURE_MS, and never once a recording queue is 3/4 full.
         * Past that, this event is this sink's own loss. */
        pthread_mutex_lock(&q->mu);
        if (q->running) wait_harmless(q, BACKPRESSURE_MS);
        int handed = q->running && !q->busy;
        if (handed) hand_over(q);
        pthread_mutex_unlock(&q->mu);
        if (!handed) {
            atomic_fetch_add(&q->lost, 1);
            return 0;
        }
    }
    if (batch_add(q->fill, r)) atomic_fetch_add(&q->lost, 1);
    return 0;
}

static uint64_t sql_commit(sink *s, int sync)
{
    sqlsink *q = s->state;
    pthread_mutex_lock(&q->mu);
    if (!q->running) start_thread(q);
    if (q->running) {
        /* Busy: let this batch grow once (group commit); at the next
         * commit wait for the database while that is harmless, at most
         * COMMIT_WAIT_MS (on two cores, yielding to the database thread
         * keeps inserts fast), else let it grow on: while another process
         * holds the lock the database thread may be busy for seconds.  A flush
         * waits a bounded time, then leaves the batch to a later commit. */
        int64_t deadline = sync ? tally__mono_ns() + (int64_t)SYNC_WAIT_MS * 1000000 : 0;
        if (sync) wait_idle(q, deadline);
        else if (q->busy && q->fill->rb.n && q->fill->deferred && !q->stalled)
            q->stalled = !wait_harmless(q, COMMIT_WAIT_MS); /* still busy: do not wait again until it is not */
        if (q->fill->rb.n && !q->busy) {
            hand_over(q);
            q->stalled = 0;
        } else if (q->fill->rb.n) {
            q->fill->deferred = 1;
        }
        if (sync) wait_idle(q, deadline);
    }
    pthread_mutex_unlock(&q->mu);
    if (!q->running && q->fill->rb.n) {
        atomic_fetch_add(&q->lost, q->fill->rb.n);
        batch_clear(q->fill);
    }
    return atomic_exchange(&q->lost, 0);
}

static void sql_after_fork(sink *s)
{
    sqlsink *q = s->state;
    /* In a child, neither the database thread nor its connection exists:
     * the parent's are left alone and the child starts its own (the first
     * commit starts the thread, which opens the database). */
    q->st = NULL;
    q->last_try_ns = 0;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->work_cv, NULL);
    pthread_cond_init(&q->idle_cv, NULL);
    q->running = q->busy = q->stop = q->stalled = 0;
    batch_clear(&q->b[0]);
    batch_clear(&q->b[1]);
    atomic_store(&q->lost, 0);
}

static void sql_close(sink *s)
{
    sqlsink *q = s->state;
    if (q->running) {
        /* The last events: bounded by BUSY_RETRY_MS. */
        pthread_mutex_lock(&q->mu);
        wait_idle(q, 0);
        if (q->fill->rb.n) hand_over(q);
        wait_idle(q, 0);
        q->stop = 1;
        pthread_cond_signal(&q->work_cv);
        pthread_mutex_unlock(&q->mu);
        pthread_join(q->th, NULL);
    }
    uint64_t late = atomic_exchange(&q->lost, 0);
    if (late) /* after run_end was written: said here, since no counter can show it */
        tally__log(q->h, TALLY_LOG_WARN, "%llu events could not be stored in %s at close", (unsigned long long)late,
                   q->path);
    store_close(q->st);
    for (int i = 0; i < 2; i++) {
        row_batch_free(&q->b[i].rb);
        rollup_free(q->b[i].cells);
    }
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->work_cv);
    pthread_cond_destroy(&q->idle_cv);
    free(q->path);
    free(q);
    s->state = NULL;
}

static const sink_ops sql_ops = {"sqlite", 1, sql_write, sql_commit, sql_after_fork, sql_close};

int sink_sqlite_open(struct tally *h, sink *s, const char *path)
{
    sqlsink *q = calloc(1, sizeof *q);
    s->ops = &sql_ops;
    s->h = h;
    s->state = q;
    if (!q) return -1;
    q->h = h;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->work_cv, NULL);
    pthread_cond_init(&q->idle_cv, NULL);
    q->path = strdup(path);
    for (int i = 0; i < 2; i++) {
        buf_init(&q->b[i].rb.bytes, BATCH_MAX_BYTES + ((size_t)16 << 20));
        q->b[i].cells = rollup_new(BATCH_MAX_CELLS);
        if (!q->b[i].cells) return -1;
    }
    q->fill = &q->b[0];
    q->work = &q->b[1];
    /* Opened here, on the caller's thread, so that a database that cannot
     * be opened is reported at once; retention runs first. */
    try_open(q);
    if (q->st) retention(q);
    return q->st ? 0 : -1;
}
