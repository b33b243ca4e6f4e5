/*
 * store -- tally's SQLite database (see store.h and docs/schema.md).
 *
 * Checks come before any write: a file that is not SQLite, a database
 * that is someone else's (application_id) or newer than this build
 * (user_version) is refused before a pragma could change it.  Only then is
 * WAL switched on and the schema created or migrated, in one transaction.
 *
 * Where an event goes.  seq = time in microseconds x STORE_SLOTS + slot:
 * the first free slot at or after the event's time.  A writer that
 * inserts events in time order takes the slot after its last one without
 * looking; another writer in the same microsecond finds the slot taken
 * (the insert fails on the primary key) and looks for the next free one.
 * More than STORE_SLOTS events in one microsecond spill into the slots of
 * the following ones, always contiguously, so an event is found again by
 * reading from its time's first slot along the run of taken slots.  Events
 * with no time go below zero, placed by a hash of their id.
 *
 * Why not an index per question: each index costs a b-tree insert per
 * event (measured on the 2-core VM: 620,000 rows/s with none, 480,000 with
 * an index on ts, 250,000 with the four of schema v1).  Time ranges and
 * retention are ranges of seq; finding an event again (import) reads a
 * few rows at its time; per-model and per-engine questions are answered
 * by the rollup, one cell per minute and key, maintained in the same
 * transaction as the rows it counts.
 *
 * Checkpoints.  In WAL mode every commit appends to the log, and SQLite
 * copies the log into the database (a checkpoint, with an fsync) on the
 * committing thread once the log reaches 1000 pages.  With
 * STORE_CHECKPOINTER a thread of the store's own does that copy on its own
 * connection while the writer goes on; when the log has grown past
 * CK_MAX_FRAMES (the checkpoint cannot keep up) the writer waits, after a
 * commit, until the log has been copied, so that it restarts from the
 * beginning: the log's size stays bounded.
 */
#include "store_int.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agg.h"
#include "buf.h"
#include "hash.h"
#include "rollup.h"

/* ---- schema --------------------------------------------------------------- */

#define RUNS_V1                                                                                            \
    "CREATE TABLE runs("                                                                                   \
    " run_id TEXT PRIMARY KEY, phase TEXT, started_at TEXT, ended_at TEXT, reason TEXT,"                  \
    " host TEXT, backend TEXT, model TEXT, config TEXT,"                                                   \
    " requests INTEGER, errors INTEGER, tokens_out INTEGER, events INTEGER, dropped INTEGER,"             \
    " final_step INTEGER, final_loss REAL, start_ts REAL, end_ts REAL)"

static const char near_sql[] = "SELECT seq, id FROM events WHERE seq >= ?1 ORDER BY seq";
static const char at_sql[] = "SELECT id FROM events WHERE seq = ?1";

/* The runs table from a run_start / run_end line (?2), read by SQLite's
 * JSON functions: the sink hands over the line the writer made and never
 * parses it again.  A line that is not valid JSON adds nothing. */
static const char run_start_sql[] =
    "INSERT INTO runs(run_id, phase, started_at, host, backend, model, config, start_ts)"
    " SELECT ?1, json_extract(j, '$.phase'), json_extract(j, '$.started_at'), json_extract(j, '$.host'),"
    " json_extract(j, '$.backend'), CASE json_type(j, '$.model') WHEN 'object' THEN json_extract(j, '$.model.name')"
    " ELSE json_extract(j, '$.model') END, json_extract(j, '$.config'), json_extract(j, '$.ts')"
    " FROM (SELECT ?2 AS j) WHERE json_valid(j)"
    " ON CONFLICT(run_id) DO UPDATE SET phase=coalesce(phase,excluded.phase),"
    " started_at=coalesce(started_at,excluded.started_at), host=coalesce(host,excluded.host),"
    " backend=coalesce(backend,excluded.backend), model=coalesce(model,excluded.model),"
    " config=coalesce(config,excluded.config), start_ts=coalesce(start_ts,excluded.start_ts)";

static const char run_end_sql[] =
    "INSERT INTO runs(run_id, ended_at, reason, requests, errors, tokens_out, events, dropped,"
    " final_step, final_loss, end_ts)"
    " SELECT ?1, json_extract(j, '$.ended_at'), json_extract(j, '$.reason'), json_extract(j, '$.stats.requests'),"
    " json_extract(j, '$.stats.errors'), json_extract(j, '$.stats.tokens_out'), json_extract(j, '$.stats.events'),"
    " json_extract(j, '$.stats.dropped'), json_extract(j, '$.final_step'), json_extract(j, '$.final_loss'),"
    " json_extract(j, '$.ts') FROM (SELECT ?2 AS j) WHERE json_valid(j)"
    " ON CONFLICT(run_id) DO UPDATE SET ended_at=excluded.ended_at, reason=excluded.reason,"
    " requests=excluded.requests, errors=excluded.errors, tokens_out=excluded.tokens_out, events=excluded.events,"
    " dropped=excluded.dropped, final_step=excluded.final_step, final_loss=excluded.final_loss,"
    " end_ts=excluded.end_ts";

/* ---- the events and rollup tables, from one list of columns ------------------------ */

/* The events table's columns, in the one order that CREATE, INSERT, SELECT,
 * bind_row() and store_row_from_stmt() use: the head, a column for each
 * named request field (fields.h), the tail.  `v1` / `v2`: what a database
 * of that schema version has instead (NULL: the column itself). */
typedef struct col {
    const char *name, *type;
    const char *v1;
} col;

static const col head_cols[] = {
    {"seq", "INTEGER PRIMARY KEY", NULL}, {"id", "TEXT NOT NULL", NULL}, {"ts", "REAL", NULL},
    {"run_id", "TEXT", NULL},             {"kind", "TEXT NOT NULL", NULL}, {"phase", "TEXT", NULL},
    {"name", "TEXT", NULL},
};
static const col tail_cols[] = {
    {"ok", "INTEGER", NULL},
    {"error", "TEXT", NULL},
    {"degraded", "TEXT", NULL},
    {"step", "INTEGER", NULL},
    {"loss", "REAL", NULL},
    /* v1 kept a step's wall time and tokens only in its JSON. */
    {"wall_us", "INTEGER",
     "CASE WHEN kind IN ('step','epoch') AND json_extract(json, '$.unfinished') IS NULL"
     " THEN json_extract(json, '$.wall_us') END"},
    {"step_tokens", "INTEGER", "CASE WHEN kind='step' THEN json_extract(json, '$.tokens') END"},
    {"text", "TEXT", NULL},
    {"json", "TEXT NOT NULL", NULL},
};
#define N_HEAD STORE_HEAD_COLS
#define N_TAIL STORE_TAIL_COLS
_Static_assert(sizeof head_cols / sizeof head_cols[0] == STORE_HEAD_COLS, "store_int.h: STORE_HEAD_COLS");
_Static_assert(sizeof tail_cols / sizeof tail_cols[0] == STORE_TAIL_COLS, "store_int.h: STORE_TAIL_COLS");

char store_sql_events[2048], store_sql_rollup[1024], store_sql_insert_head[1536], store_sql_insert_row[256],
    store_sql_insert[2048];
char store_sql_upsert[1024];
static pthread_once_t sql_once = PTHREAD_ONCE_INIT;

/* Appends to a static buffer (sized for the lists above; checked). */
static void cat(char *dst, size_t cap, const char *s)
{
    size_t n = strlen(dst), k = strlen(s);
    if (n + k >= cap) abort(); /* a column list outgrew its buffer: a build error, caught by every test */
    memcpy(dst + n, s, k + 1);
}
#define CAT(dst, s) cat((dst), sizeof(dst), (s))

/* Column i of INSERT_COLS: name and type, and what a database of schema
 * `version` has there (v1 kept step times in the JSON). */
void store_column_at(int i, const char **name, const char **type, const char **expr, int version)
{
    const col *c = NULL;
    if (i < N_HEAD) c = &head_cols[i];
    else if (i >= N_HEAD + N_REQUEST_LABELS + N_REQUEST_NUMBERS)
        c = &tail_cols[i - N_HEAD - N_REQUEST_LABELS - N_REQUEST_NUMBERS];
    if (c) {
        *name = c->name;
        *type = c->type;
        *expr = version == 1 && c->v1 ? c->v1 : c->name;
        return;
    }
    if (i < N_HEAD + N_REQUEST_LABELS) {
        const field_def *f = &tally_request_labels[i - N_HEAD];
        *name = *expr = f->key;
        *type = "TEXT";
        return;
    }
    const number_def *f = &tally_request_numbers[i - N_HEAD - N_REQUEST_LABELS];
    *name = *expr = f->key;
    *type = f->type == FLD_I64 ? "INTEGER" : "REAL";
}

static void build_sql(void)
{
    const char *name, *type, *expr;
    CAT(store_sql_events, "CREATE TABLE events(");
    CAT(store_sql_insert_head, "INSERT OR FAIL INTO events(");
    CAT(store_sql_insert_row, "(");
    for (int i = 0; i < INSERT_COLS; i++) {
        store_column_at(i, &name, &type, &expr, STORE_VERSION);
        if (i) {
            CAT(store_sql_events, ", ");
            CAT(store_sql_insert_head, ", ");
            CAT(store_sql_insert_row, ",");
        }
        CAT(store_sql_events, name);
        CAT(store_sql_events, " ");
        CAT(store_sql_events, type);
        CAT(store_sql_insert_head, name);
        CAT(store_sql_insert_row, "?");
    }
    CAT(store_sql_events, ")");
    /* OR FAIL: a row that conflicts stops the statement and keeps the rows
     * before it, so a statement of many rows needs no statement journal. */
    CAT(store_sql_insert_head, ") VALUES");
    CAT(store_sql_insert_row, ")");
    CAT(store_sql_insert, store_sql_insert_head);
    CAT(store_sql_insert, store_sql_insert_row);
    /* The rollup: its key's fields as columns, for people with sqlite3. */
    char labels[512] = "", params[256] = "";
    int np = 5; /* minute, key, run, kind, phase */
    for (int i = 0; i < N_REQUEST_LABELS; i++) {
        if (!(tally_request_labels[i].flags & FLD_ROLLUP)) continue;
        char p[16];
        CAT(labels, ", ");
        CAT(labels, tally_request_labels[i].key);
        snprintf(p, sizeof p, ",?%d", ++np);
        CAT(params, p);
    }
    CAT(store_sql_rollup, "CREATE TABLE rollup(minute INTEGER NOT NULL, key BLOB NOT NULL, run_id TEXT, kind TEXT,"
                    " phase TEXT");
    for (int i = 0; i < N_REQUEST_LABELS; i++) {
        if (!(tally_request_labels[i].flags & FLD_ROLLUP)) continue;
        CAT(store_sql_rollup, ", ");
        CAT(store_sql_rollup, tally_request_labels[i].key);
        CAT(store_sql_rollup, " TEXT");
    }
    CAT(store_sql_rollup, ", ok INTEGER, degraded TEXT, events INTEGER NOT NULL, cell BLOB NOT NULL,"
                    " PRIMARY KEY(minute, key))");
    char tail[256];
    snprintf(tail, sizeof tail, ",?%d,?%d,?%d,?%d)", np + 1, np + 2, np + 3, np + 4);
    CAT(store_sql_upsert, "INSERT INTO rollup(minute, key, run_id, kind, phase");
    CAT(store_sql_upsert, labels);
    CAT(store_sql_upsert, ", ok, degraded, events, cell) VALUES(?1,?2,?3,?4,?5");
    CAT(store_sql_upsert, params);
    CAT(store_sql_upsert, tail);
    CAT(store_sql_upsert, " ON CONFLICT(minute, key) DO UPDATE SET events = events + excluded.events,"
                    " cell = tally_cell_merge(cell, excluded.cell)");
}

void store_sql_init(void) { pthread_once(&sql_once, build_sql); }

int store_version(sqlite3 *db)
{
    int64_t v = 0;
    return pragma_int(db, "PRAGMA user_version", &v) == 0 ? (int)v : 0;
}

/* A column for every named field and number (fields.h) the tables lack: a field added
 * to the table gets its column the next time a writer opens the database,
 * without a schema version of its own.  Rows stored before keep theirs in
 * the JSON only. */
static int add_label_columns(sqlite3 *db)
{
    char sql[256];
    for (int i = 0; i < N_REQUEST_LABELS; i++) {
        const field_def *f = &tally_request_labels[i];
        if (!store_has_column(db, "events", f->key)) {
            snprintf(sql, sizeof sql, "ALTER TABLE events ADD COLUMN %s TEXT", f->key);
            if (exec(db, sql)) return -1;
        }
        if ((f->flags & FLD_ROLLUP) && !store_has_column(db, "rollup", f->key)) {
            snprintf(sql, sizeof sql, "ALTER TABLE rollup ADD COLUMN %s TEXT", f->key);
            if (exec(db, sql)) return -1;
        }
    }
    for (int i = 0; i < N_REQUEST_NUMBERS; i++) {
        const number_def *f = &tally_request_numbers[i];
        if (store_has_column(db, "events", f->key)) continue;
        snprintf(sql, sizeof sql, "ALTER TABLE events ADD COLUMN %s %s", f->key, f->type == FLD_I64 ? "INTEGER" : "REAL");
        if (exec(db, sql)) return -1;
    }
    return 0;
}

/* ---- statements ------------------------------------------------------------- */

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    if (*st) return 0;
    return sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) == SQLITE_OK ? 0 : -1;
}

static int prepare_all(store *s)
{
    if (!s->ins_many) {
        /* One statement of INSERT_MANY rows. */
        char sql[sizeof store_sql_insert_head + INSERT_MANY * (sizeof store_sql_insert_row + 1)];
        size_t n = strlen(store_sql_insert_head), rl = strlen(store_sql_insert_row);
        memcpy(sql, store_sql_insert_head, n);
        for (int i = 0; i < INSERT_MANY; i++) {
            if (i) sql[n++] = ',';
            memcpy(sql + n, store_sql_insert_row, rl);
            n += rl;
        }
        sql[n] = 0;
        if (prepare(s->db, sql, &s->ins_many)) return -1;
    }
    return prepare(s->db, store_sql_insert, &s->ins) || prepare(s->db, near_sql, &s->near) || prepare(s->db, at_sql, &s->at) ||
           prepare(s->db, store_sql_upsert, &s->upsert) || prepare(s->db, run_start_sql, &s->run_start) ||
           prepare(s->db, run_end_sql, &s->run_end);
}

static void finalize_all(store *s)
{
    sqlite3_stmt **sts[] = {&s->ins, &s->ins_many, &s->near, &s->at, &s->upsert, &s->run_start, &s->run_end};
    for (size_t i = 0; i < sizeof sts / sizeof sts[0]; i++) {
        sqlite3_finalize(*sts[i]);
        *sts[i] = NULL;
    }
}

/* ---- migration ---------------------------------------------------------------- */

/* v1 -> v2: rows move to their place in time (v1 numbered them in arrival
 * order and kept four indexes), step times become columns, the rollup is
 * built from the rows. */
static int migrate_v1(store *s)
{
    sqlite3 *db = s->db;
    if (exec(db, "DROP INDEX IF EXISTS events_ts") || exec(db, "DROP INDEX IF EXISTS events_model_ts") ||
        exec(db, "DROP INDEX IF EXISTS events_engine_ts") || exec(db, "ALTER TABLE events RENAME TO events_v1") ||
        exec(db, store_sql_events) || exec(db, store_sql_rollup) || prepare_all(s))
        return -1;
    char sel[STORE_SQL_MAX], sql[STORE_SQL_MAX + 128];
    if (store_select(db, 1, "events_v1", 1, sel, sizeof sel)) return -1;
    snprintf(sql, sizeof sql, "%s ORDER BY ts, seq", sel);
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) return -1;
    int rc, failed = 0;
    while (!failed && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        row r;
        store_row_from_stmt(q, &r);
        r.json = (sv){(const char *)sqlite3_column_text(q, SELECT_NCOLS), (size_t)sqlite3_column_bytes(q, SELECT_NCOLS)};
        failed = store_insert(s, &r, 0) < 0;
    }
    sqlite3_finalize(q);
    if (failed || rc != SQLITE_DONE || store_write_cells(s) || exec(db, "DROP TABLE events_v1")) return -1;
    return 0;
}

static int migrate(store *s, int64_t from)
{
    sqlite3 *db = s->db;
    if (exec(db, "BEGIN IMMEDIATE")) return -1;
    /* Another process may have migrated while we waited for the lock. */
    int64_t app = 0, now = from;
    if (pragma_int(db, "PRAGMA user_version", &now) || pragma_int(db, "PRAGMA application_id", &app)) goto fail;
    if (now != from && app == STORE_APP_ID) {
        exec(db, "COMMIT");
        return 0;
    }
    if (from == 0) {
        if (exec(db, store_sql_events) || exec(db, store_sql_rollup) || exec(db, RUNS_V1)) goto fail;
    } else if (from == 1) {
        if (migrate_v1(s)) goto fail;
    }
    /* v2 -> v3, and any named field added since: its columns. */
    if (add_label_columns(db)) goto fail;
    char sql[96];
    snprintf(sql, sizeof sql, "PRAGMA application_id=%d", STORE_APP_ID);
    if (exec(db, sql)) goto fail;
    snprintf(sql, sizeof sql, "PRAGMA user_version=%d", STORE_VERSION);
    if (exec(db, sql) || exec(db, "COMMIT")) goto fail;
    return 0;
fail:
    exec(db, "ROLLBACK");
    rollup_clear(s->cells);
    finalize_all(s);
    return -1;
}

/* ---- open / close --------------------------------------------------------------- */

store *store_open(const char *path, int flags, char *err, size_t errlen)
{
    store_sql_init();
    sqlite3 *db = NULL;
    int oflags = (flags & STORE_READONLY) ? SQLITE_OPEN_READONLY
                                          : SQLITE_OPEN_READWRITE | ((flags & STORE_CREATE) ? SQLITE_OPEN_CREATE : 0);
    if (sqlite3_open_v2(path, &db, oflags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        set_err(err, errlen, "cannot open database %s: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 2000);
    /* One statement, so the three come from one snapshot even while
     * another process is creating the schema. */
    int64_t app = 0, ver = 0, objects = 0;
    sqlite3_stmt *probe = NULL;
    int prc = sqlite3_prepare_v2(db,
                                 "SELECT (SELECT application_id FROM pragma_application_id),"
                                 " (SELECT user_version FROM pragma_user_version),"
                                 " (SELECT count(*) FROM sqlite_master)",
                                 -1, &probe, NULL);
    if (prc == SQLITE_OK) prc = sqlite3_step(probe);
    if (prc == SQLITE_ROW) {
        app = sqlite3_column_int64(probe, 0);
        ver = sqlite3_column_int64(probe, 1);
        objects = sqlite3_column_int64(probe, 2);
    }
    sqlite3_finalize(probe);
    if (prc != SQLITE_ROW) {
        set_err(err, errlen, "cannot read %s: %s", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return NULL;
    }
    int fresh = app == 0 && ver == 0 && objects == 0;
    if (!fresh && app != STORE_APP_ID) {
        set_err(err, errlen, "%s is not a tally database%s (left unchanged)", path, objects ? "" : " (no tables)");
        sqlite3_close(db);
        return NULL;
    }
    if (ver > STORE_VERSION) {
        set_err(err, errlen, "%s has a newer schema (v%lld, this tally reads up to v%d; left unchanged)", path,
                (long long)ver, STORE_VERSION);
        sqlite3_close(db);
        return NULL;
    }
    if (fresh && !(flags & STORE_CREATE)) {
        set_err(err, errlen, "%s is empty: not a tally database", path);
        sqlite3_close(db);
        return NULL;
    }
    store *s = calloc(1, sizeof *s);
    if (!s || !(s->cells = rollup_new(ROLLUP_MAX_CELLS))) {
        free(s);
        sqlite3_close(db);
        set_err(err, errlen, "out of memory opening %s", path);
        return NULL;
    }
    s->db = db;
    buf_init(&s->cellbuf, (size_t)16 << 20);
    if (flags & STORE_READONLY) return s;
    sqlite3_create_function_v2(db, "tally_cell_merge", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL, store_cell_merge_fn,
                               NULL, NULL, NULL);
    /* Two processes opening a new database at once: one of them can get
     * SQLITE_BUSY at once (SQLite's deadlock avoidance ignores the busy
     * timeout there), so the setup is retried, boundedly. */
    int failed = 1;
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA page_size=%d", PAGE_SIZE);
    s->bulk = fresh && (flags & STORE_NEW_BULK);
    const char *journal = s->bulk ? "PRAGMA journal_mode=DELETE" : "PRAGMA journal_mode=WAL";
    for (int tries = 0; tries < 100 && failed; tries++) {
        failed = (fresh && exec(db, sql)) || exec(db, journal) ||
                 exec(db, "PRAGMA synchronous=NORMAL") || (ver < STORE_VERSION && migrate(s, ver)) || prepare_all(s);
        if (failed && sqlite3_errcode(db) != SQLITE_BUSY && sqlite3_errcode(db) != SQLITE_LOCKED) break;
        if (failed) sqlite3_sleep(10);
    }
    if (failed) {
        set_err(err, errlen, "cannot set up %s: %s", path, sqlite3_errmsg(db));
        store_close(s);
        return NULL;
    }
    if ((flags & STORE_CHECKPOINTER) && !s->bulk) s->ck = store_ckpt_start(s, path); /* without one, SQLite checkpoints itself */
    return s;
}

void store_close(store *s)
{
    if (!s) return;
    if (s->in_txn) store_rollback(s);
    store_ckpt_stop(s);
    finalize_all(s);
    if (s->bulk) exec(s->db, "PRAGMA journal_mode=WAL"); /* as every tally database is */
    sqlite3_close(s->db);
    rollup_free(s->cells);
    buf_free(&s->cellbuf);
    free(s);
}

struct sqlite3 *store_db(store *s) { return s ? s->db : NULL; }

/* SQLite's message, with the system's reason when there is one: "disk I/O
 * error" alone does not say that the disk is full or the file too large. */
const char *store_errmsg(store *s)
{
    if (!s) return "no database";
    int e = sqlite3_system_errno(s->db);
    if (!e) return sqlite3_errmsg(s->db);
    snprintf(s->errbuf, sizeof s->errbuf, "%s (%s)", sqlite3_errmsg(s->db), strerror(e));
    return s->errbuf;
}

int store_busy(store *s)
{
    if (!s) return 0;
    int e = sqlite3_errcode(s->db);
    return e == SQLITE_BUSY || e == SQLITE_LOCKED;
}

/* ---- transactions ------------------------------------------------------------- */

static void fresh_end(store *s)
{
    if (s->fresh_ok) idset_free(&s->fresh_ids);
    s->fresh_ok = 0;
}

int store_begin(store *s)
{
    if (s->in_txn) return 0;
    if (exec(s->db, "BEGIN IMMEDIATE")) return -1;
    s->in_txn = 1;
    s->fresh_tried = 0; /* STORE_DEDUP's first insert finds where fresh rows start */
    return 0;
}

int store_commit(store *s)
{
    if (!s->in_txn) return 0;
    if (store_write_cells(s) || exec(s->db, "COMMIT")) {
        store_rollback(s);
        return -1;
    }
    s->in_txn = 0;
    fresh_end(s);
    store_ckpt_bound(s);
    return 0;
}

void store_rollback(store *s)
{
    /* After a failed COMMIT (disk full, file size limit) SQLite has often
     * rolled back already; a second ROLLBACK would replace the real cause
     * in sqlite3_errmsg() with "no transaction is active". */
    if (s->in_txn && !sqlite3_get_autocommit(s->db)) exec(s->db, "ROLLBACK");
    s->in_txn = 0;
    fresh_end(s);
    rollup_clear(s->cells);
    s->have_last = 0; /* the slots it took are free again */
}

