/*
 * sink_clickhouse -- events into ClickHouse as they are recorded
 * (docs/clickhouse.md).
 *
 * The writer thread turns each event's row into a TabSeparated line
 * (clickhouse.c) in a buffer of its own; at each commit the buffer joins
 * the shipper's open batch (ship.c), which is sealed at 100,000 rows,
 * 16 MiB or one second, and posted by the shipper's thread as one
 * INSERT, gzipped.  ClickHouse wants few large inserts, not many small
 * ones: the batch outlives the writer's commits for that reason.
 *
 * The database and tables are made by the sender before its first
 * insert (and again if they disappear).  What an answer means: a server
 * that cannot be reached, or an exception that a later try can get past
 * (too many parts, memory, time-outs, a read-only table, unknown user or
 * wrong password -- a fixed configuration replays the spool), is retried
 * with backoff while the batches wait in the spool; any other exception
 * (a row the server cannot parse) is logged with the server's message,
 * counted as this sink's loss and the batch set aside.
 *
 * Exactly once: a retried batch inserts rows already there; the events
 * table is a ReplacingMergeTree keyed by the event, and tally reads it
 * with FINAL, so they are never counted twice.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clickhouse.h"
#include "internal.h"
#include "row.h"
#include "ship.h"

#define BATCH_ROWS 100000
#define BATCH_BYTES ((size_t)16 << 20)
#define QUEUE_BYTES ((size_t)64 << 20)
#define PENDING_BYTES ((size_t)64 << 20)
#define FLUSH_WAIT_MS 5000

typedef struct chsink {
    ch_target t;
    char *insert_url;
    ship *ship;
    int schema_ok;            /* sender thread's */
    int warned_schema, warned_auth;
    buf pend;                 /* writer-owned: rows since the last commit */
    uint32_t pend_rows;
} chsink;

/* ClickHouse's exception code at the start of an answer ("Code: 252, ..."), or 0. */
static long exception_code(const char *body)
{
    const char *c = body ? strstr(body, "Code: ") : NULL;
    return c ? strtol(c + 6, NULL, 10) : 0;
}

/* Exceptions that a later try can get past. */
static int transient(long code)
{
    switch (code) {
    case 159: /* TIMEOUT_EXCEEDED */
    case 164: /* READONLY */
    case 202: /* TOO_MANY_SIMULTANEOUS_QUERIES */
    case 209: /* SOCKET_TIMEOUT */
    case 210: /* NETWORK_ERROR */
    case 236: /* ABORTED */
    case 241: /* MEMORY_LIMIT_EXCEEDED */
    case 242: /* TABLE_IS_READ_ONLY */
    case 252: /* TOO_MANY_PARTS */
    case 319: /* UNKNOWN_STATUS_OF_INSERT */
    case 394: /* QUERY_WAS_CANCELLED */
    case 425: /* SYSTEM_ERROR */
    case 999: /* KEEPER_EXCEPTION */
        return 1;
    }
    return 0;
}

static int auth_failure(long status, long code)
{
    return status == 401 || status == 403 || code == 192 /* UNKNOWN_USER */ || code == 193 /* WRONG_PASSWORD */ ||
           code == 497 /* ACCESS_DENIED */ || code == 516 /* AUTHENTICATION_FAILED */;
}

static int post(void *ud, ship *sh, const char *body, size_t len, uint32_t rows, long *retry_after, char *reason,
                size_t reason_len)
{
    chsink *c = ud;
    if (!c->schema_ok) {
        char err[600];
        if (ch_create_schema(&c->t, err, sizeof err) != 0) {
            if (!c->warned_schema++)
                ship_log(sh, TALLY_LOG_WARN, "ClickHouse tables cannot be made (%s): rows wait in the spool", err);
            return SHIP_RETRY;
        }
        c->schema_ok = 1;
        c->warned_schema = 0;
    }
    ship_resp r = {0};
    long status = ship_http(sh, c->insert_url, NULL, c->t.user, c->t.password, body, len, &r);
    *retry_after = r.retry_after_s;
    long code = status == 200 || status < 0 ? 0 : exception_code(r.body.p);
    int out;
    if (status == 200) {
        out = SHIP_OK;
        c->warned_auth = 0;
    } else if (status < 0 || status == 408 || status == 429 || status == 502 || status == 503 || status == 504 ||
               transient(code)) {
        out = SHIP_RETRY;
    } else if (auth_failure(status, code)) {
        if (!c->warned_auth++)
            ship_log(sh, TALLY_LOG_WARN,
                     "ClickHouse at %s refused tally's credentials (HTTP %ld, code %ld): rows wait in the spool",
                     c->t.base, status, code);
        out = SHIP_RETRY;
    } else if (code == 60 /* UNKNOWN_TABLE */ || code == 81 /* UNKNOWN_DATABASE */) {
        c->schema_ok = 0; /* dropped meanwhile: made again before the next try */
        out = SHIP_RETRY;
    } else {
        const char *msg = r.body.len ? r.body.p : "";
        size_t n = strcspn(msg, "\n");
        snprintf(reason, reason_len, "HTTP %ld: %.*s", status, (int)(n < 400 ? n : 400), msg);
        ship_log(sh, TALLY_LOG_WARN, "ClickHouse at %s refused a batch of %u rows, set aside, not retried: %s",
                 c->t.base, rows, reason);
        out = SHIP_REJECT;
    }
    ship_resp_free(&r);
    return out;
}

static int ch_write(sink *s, const wev *ev, const struct row *r, const char *line, size_t len)
{
    (void)ev;
    (void)line;
    (void)len;
    chsink *c = s->state;
    if (!r) return -1;
    size_t mark = c->pend.len;
    ch_row_tsv(&c->pend, r);
    if (c->pend.failed) {
        c->pend.failed = 0;
        c->pend.len = mark;
        return -1;
    }
    c->pend_rows++;
    if (c->pend.len >= BATCH_BYTES || c->pend_rows >= BATCH_ROWS) {
        ship_append(c->ship, c->pend.p, c->pend.len, c->pend_rows, 0);
        buf_reset(&c->pend);
        c->pend_rows = 0;
    }
    return 0;
}

static uint64_t ch_commit(sink *s, int sync)
{
    chsink *c = s->state;
    if (c->pend_rows || sync) ship_append(c->ship, c->pend.p, c->pend.len, c->pend_rows, sync);
    buf_reset(&c->pend);
    c->pend_rows = 0;
    /* A flush means the rows are in ClickHouse, or in the spool when it is
     * away (a server that hangs is waited for a few seconds at most). */
    if (sync) ship_drain(c->ship, FLUSH_WAIT_MS);
    return 0;
}

static void ch_after_fork(sink *s)
{
    chsink *c = s->state;
    ship_after_fork(c->ship);
    buf_reset(&c->pend);
    c->pend_rows = 0;
}

static void ch_close(sink *s)
{
    chsink *c = s->state;
    if (!c) return;
    s->state = NULL;
    if (c->ship) {
        if (c->pend_rows) ship_append(c->ship, c->pend.p, c->pend.len, c->pend_rows, 1);
        ship_close(c->ship);
    }
    buf_free(&c->pend);
    free(c->insert_url);
    ch_target_free(&c->t);
    free(c);
}

static const sink_ops ch_ops = {"clickhouse", 1, ch_write, ch_commit, ch_after_fork, ch_close};

static char *insert_url(const ch_target *t)
{
    char sql[4096];
    snprintf(sql, sizeof sql, "INSERT INTO %s.events (%s) FORMAT TabSeparated", t->db, ch_columns());
    CURL *e = curl_easy_init();
    char *q = e ? curl_easy_escape(e, sql, 0) : NULL;
    size_t n = strlen(t->base) + (q ? strlen(q) : 0) + 16;
    char *u = q ? malloc(n) : NULL;
    if (u) snprintf(u, n, "%s?query=%s", t->base, q);
    curl_free(q);
    if (e) curl_easy_cleanup(e);
    return u;
}

int sink_clickhouse_open(struct tally *h, sink *s, const tally_config *cfg, const char *url)
{
    s->ops = &ch_ops;
    s->h = h;
    s->state = NULL;
    tally__curl_init();
    chsink *c = calloc(1, sizeof *c);
    if (!c) return -1;
    char err[600];
    if (ch_target_init(&c->t, url, err, sizeof err) != 0) {
        tally__log(h, TALLY_LOG_ERROR, "ClickHouse sink not started: %s", err);
        free(c);
        return -1;
    }
    c->insert_url = insert_url(&c->t);
    buf_init(&c->pend, PENDING_BYTES);
    char def[4200];
    const char *spool =
        ship_spool_dir(h, "TALLY_CLICKHOUSE_SPOOL", cfg->clickhouse_spool_dir, ".clickhouse-spool", def, sizeof def);
    ship_conf sc = {
        .what = "ClickHouse",
        .post = post,
        .ud = c,
        .spool = spool,
        .spool_max_bytes = cfg->clickhouse_spool_max_bytes ? cfg->clickhouse_spool_max_bytes : (uint64_t)1 << 30,
        .backoff_ms = cfg->clickhouse_backoff_ms,
        .queue_bytes = QUEUE_BYTES,
        .batch_bytes = BATCH_BYTES,
        .batch_items = BATCH_ROWS,
        .linger_ms = 1000,
        .log = h->log,
        .log_ud = h->log_ud,
        .lost = &s->lost,
    };
    c->ship = c->insert_url ? ship_open(&sc) : NULL;
    if (!c->ship) {
        buf_free(&c->pend);
        free(c->insert_url);
        ch_target_free(&c->t);
        free(c);
        return -1;
    }
    s->state = c;
    return 0;
}
