/*
 * sink_sqlite -- the events database (see store.c, docs/schema.md).
 *
 * Runs on the writer thread only: one transaction per batch (BEGIN
 * IMMEDIATE at the batch's first event, COMMIT at the flush), prepared
 * statements, WAL, synchronous=NORMAL, a 2 s busy timeout.  Several
 * processes may write one database: a batch that still cannot get the lock
 * is rolled back and its events counted as lost (the JSONL file, when
 * configured, remains the record).  Retention runs every
 * TRIM_EVERY batches, never on the recording path.
 *
 * Columns come straight from the ring record; run_start and run_end (which
 * the writer makes itself) are parsed back from their line.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "record.h"
#include "store.h"

#define TRIM_EVERY 100

typedef struct sqlsink {
    char *path;
    store *st;
    int warned_open, warned_write;
    int64_t last_try_ns;
    uint64_t pending, lost, commits;
    int txn_failed;
    json_arena arena;
} sqlsink;

static void try_open(sink *s)
{
    sqlsink *q = s->state;
    if (!sink_retry_due(&q->last_try_ns, tally__mono_ns())) return;
    char err[512];
    q->st = store_open(q->path, STORE_CREATE, err, sizeof err);
    if (!q->st) tally__warn_once(s->h, &q->warned_open, "%s (events are counted as lost)", err);
}

static sv rs(const void *base, rstr r)
{
    if (!r.off) return (sv){NULL, 0};
    return (sv){(const char *)base + r.off, r.len};
}

static void row_from_record(struct tally *h, const wev *ev, store_row *r)
{
    memset(r, 0, sizeof *r);
    r->ts = (double)ev->ts_us / 1e6;
    r->has = ROW_TS;
    r->run_id = (sv){h->run_id, strlen(h->run_id)};
    switch (ev->type) {
    case REC_REQUEST: {
        const rec_request *q = ev->payload;
        r->kind = (sv){"eval", 4};
        r->phase = (sv){"serve", 5};
        r->name = (sv){"request", 7};
        r->model = rs(q, q->s[RQ_MODEL]);
        r->engine = rs(q, q->s[RQ_ENGINE]);
        r->route = rs(q, q->s[RQ_ROUTE]);
        r->principal_id = rs(q, q->s[RQ_PRINCIPAL_ID]);
        r->request_id = rs(q, q->s[RQ_REQUEST_ID]);
        r->error = rs(q, q->s[RQ_ERROR]);
        r->degraded = rs(q, q->s[RQ_DEGRADED]);
        r->text = rs(q, q->s[RQ_TEXT]);
        r->ok = !q->s[RQ_ERROR].off && !(q->flags & TALLY_FAILED);
        r->prompt = q->prompt;
        r->completion = q->completion;
        r->latency_us = q->latency_us;
        r->has |= ROW_OK | ROW_PROMPT | ROW_COMPLETION | ROW_LATENCY;
        if (q->cached > 0) { r->cached = q->cached; r->has |= ROW_CACHED; }
        if (q->cache_write > 0) { r->cache_write = q->cache_write; r->has |= ROW_CACHE_WRITE; }
        if (q->reasoning > 0) { r->reasoning = q->reasoning; r->has |= ROW_REASONING; }
        if (q->ttft_us > 0) { r->ttft_us = q->ttft_us; r->has |= ROW_TTFT; }
        if (q->flags & TALLY_HAS_COST) { r->cost_nusd = q->cost; r->has |= ROW_COST; }
        if (q->flags & TALLY_HAS_ENERGY) { r->energy_j = q->energy_j; r->has |= ROW_ENERGY; }
        if (q->flags & TALLY_HAS_GPU_UTIL) { r->gpu_util = q->gpu_util; r->has |= ROW_GPU; }
        break;
    }
    case REC_STEP: {
        const rec_step *st = ev->payload;
        r->kind = (sv){"step", 4};
        r->phase = (sv){"train", 5};
        r->step = st->step;
        r->has |= ROW_STEP;
        if (st->loss == st->loss) { r->loss = st->loss; r->has |= ROW_LOSS; }
        break;
    }
    case REC_EPOCH:
        r->kind = (sv){"epoch", 5};
        r->phase = (sv){"train", 5};
        break;
    case REC_EVAL: {
        const rec_eval *e = ev->payload;
        r->kind = (sv){"eval", 4};
        r->phase = (sv){"eval", 4};
        r->name = e->name.off ? rs(e, e->name) : (sv){"eval", 4};
        if (e->loss == e->loss) { r->loss = e->loss; r->has |= ROW_LOSS; }
        break;
    }
    case REC_ERROR: {
        const rec_error *e = ev->payload;
        r->kind = (sv){"error", 5};
        r->name = rs(e, e->type);
        r->error = rs(e, e->message);
        r->phase = rs(e, e->phase);
        r->request_id = rs(e, e->request_id);
        if (e->step >= 0) { r->step = e->step; r->has |= ROW_STEP; }
        break;
    }
    case REC_NOTE:
        r->kind = (sv){"note", 4};
        break;
    case REC_EVENT: {
        const rec_event *e = ev->payload;
        r->kind = rs(e, e->kind);
        break;
    }
    default:
        break;
    }
}

static int sql_write(sink *s, const wev *ev, const char *line, size_t len)
{
    sqlsink *q = s->state;
    if (!q->st) try_open(s);
    if (!q->st) {
        q->lost++;
        return 0;
    }
    if (q->txn_failed) {
        q->lost++;
        return 0;
    }
    if (store_begin(q->st) != 0) {
        q->txn_failed = 1;
        q->lost++;
        tally__warn_once(s->h, &q->warned_write, "cannot write %s: %s (events are counted as lost)", q->path,
                         store_errmsg(q->st));
        return 0;
    }
    store_row r;
    if (ev->type == WEV_RUN_START || ev->type == WEV_RUN_END) {
        json_arena_reset(&q->arena);
        jv *v = json_parse(&q->arena, line, len, NULL);
        if (!v) {
            q->lost++;
            return 0;
        }
        row_from_json(v, &r);
        r.run_id = (sv){s->h->run_id, strlen(s->h->run_id)};
        store_run_event(q->st, v, r.run_id);
    } else {
        row_from_record(s->h, ev, &r);
    }
    r.id = (sv){ev->id, strlen(ev->id)};
    r.json = (sv){line, len};
    if (store_insert(q->st, &r) < 0) {
        q->lost++;
        tally__warn_once(s->h, &q->warned_write, "cannot write %s: %s (events are counted as lost)", q->path,
                         store_errmsg(q->st));
        return 0;
    }
    q->pending++;
    return 0;
}

static uint64_t sql_commit(sink *s)
{
    sqlsink *q = s->state;
    if (q->st && !q->txn_failed && q->pending) {
        if (store_commit(q->st) != 0) {
            q->lost += q->pending;
            tally__warn_once(s->h, &q->warned_write, "cannot commit to %s: %s (events are counted as lost)",
                             q->path, store_errmsg(q->st));
        } else if (++q->commits % TRIM_EVERY == 0 &&
                   (s->h->retention_max_age_s > 0 || s->h->retention_max_rows > 0)) {
            double before = s->h->retention_max_age_s > 0
                                ? (double)time(NULL) - (double)s->h->retention_max_age_s
                                : 0;
            if (store_trim(q->st, before, s->h->retention_max_rows) < 0)
                tally__log(s->h, TALLY_LOG_WARN, "retention trim of %s failed: %s", q->path, store_errmsg(q->st));
        }
    } else if (q->st) {
        store_rollback(q->st);
    }
    q->txn_failed = 0;
    q->pending = 0;
    uint64_t lost = q->lost;
    q->lost = 0;
    return lost;
}

static void sql_after_fork(sink *s)
{
    sqlsink *q = s->state;
    /* A connection must not be used, nor closed, in a child: the parent's
     * is left alone and the child opens its own on its first write. */
    q->st = NULL;
    q->last_try_ns = 0;
    q->pending = q->lost = 0;
    q->txn_failed = 0;
}

static void sql_close(sink *s)
{
    sqlsink *q = s->state;
    store_close(q->st);
    json_arena_free(&q->arena);
    free(q->path);
    free(q);
    s->state = NULL;
}

static const sink_ops sql_ops = {"sqlite", sql_write, sql_commit, sql_after_fork, sql_close};

int sink_sqlite_open(struct tally *h, sink *s, const char *path)
{
    sqlsink *q = calloc(1, sizeof *q);
    s->ops = &sql_ops;
    s->h = h;
    s->state = q;
    if (!q) return -1;
    q->path = strdup(path);
    json_arena_init(&q->arena, 16 << 20);
    try_open(s);
    if (q->st && (h->retention_max_age_s > 0 || h->retention_max_rows > 0)) {
        double before = h->retention_max_age_s > 0 ? (double)time(NULL) - (double)h->retention_max_age_s : 0;
        store_trim(q->st, before, h->retention_max_rows);
    }
    return q->st ? 0 : -1;
}
