/*
 * store -- tally's SQLite database (see store.h and docs/schema.md).
 *
 * Checks come before any write: a file that is not SQLite, a database
 * that is someone else's (application_id) or newer than this build
 * (user_version) is refused before a pragma could change it.  Only then is
 * WAL switched on and the schema created or migrated, in one transaction.
 */
#include "store.h"

#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct store {
    sqlite3 *db;
    sqlite3_stmt *ins, *run_start, *run_end;
    int in_txn;
};

static const char *const schema_v1[] = {
    "CREATE TABLE events("
    " seq INTEGER PRIMARY KEY,"
    " id TEXT NOT NULL UNIQUE,"
    " ts REAL, run_id TEXT, kind TEXT NOT NULL, phase TEXT, name TEXT,"
    " model TEXT, engine TEXT, route TEXT, principal_id TEXT, request_id TEXT,"
    " ok INTEGER, error TEXT, degraded TEXT,"
    " prompt_tokens INTEGER, cached_tokens INTEGER, cache_write_tokens INTEGER,"
    " completion_tokens INTEGER, reasoning_tokens INTEGER,"
    " latency_us INTEGER, ttft_us INTEGER, cost_nusd INTEGER, energy_j REAL, gpu_util_pct REAL,"
    " step INTEGER, loss REAL, text TEXT,"
    " json TEXT NOT NULL)",
    "CREATE INDEX events_ts ON events(ts)",
    "CREATE INDEX events_model_ts ON events(model, ts)",
    "CREATE INDEX events_engine_ts ON events(engine, ts)",
    "CREATE TABLE runs("
    " run_id TEXT PRIMARY KEY, phase TEXT, started_at TEXT, ended_at TEXT, reason TEXT,"
    " host TEXT, backend TEXT, model TEXT, config TEXT,"
    " requests INTEGER, errors INTEGER, tokens_out INTEGER, events INTEGER, dropped INTEGER,"
    " final_step INTEGER, final_loss REAL, start_ts REAL, end_ts REAL)",
    NULL,
};

/* migrations[v] takes a database from version v to v+1. */
static const char *const *const migrations[] = {schema_v1};

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t n, const char *fmt, ...)
{
    if (!err || !n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

static int exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

static int pragma_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : -1;
}

static int migrate(sqlite3 *db, int64_t from)
{
    if (exec(db, "BEGIN IMMEDIATE")) return -1;
    /* Another process may have migrated while we waited for the lock. */
    int64_t app = 0, now = from;
    if (pragma_int(db, "PRAGMA user_version", &now) || pragma_int(db, "PRAGMA application_id", &app)) goto fail;
    if (now != from && app == STORE_APP_ID) {
        exec(db, "COMMIT");
        return 0;
    }
    for (int64_t v = from; v < STORE_VERSION; v++)
        for (const char *const *q = migrations[v]; *q; q++)
            if (exec(db, *q)) goto fail;
    char sql[96];
    snprintf(sql, sizeof sql, "PRAGMA application_id=%d", STORE_APP_ID);
    if (exec(db, sql)) goto fail;
    snprintf(sql, sizeof sql, "PRAGMA user_version=%d", STORE_VERSION);
    if (exec(db, sql)) goto fail;
    if (exec(db, "COMMIT")) goto fail;
    return 0;
fail:
    exec(db, "ROLLBACK");
    return -1;
}

static const char insert_sql[] =
    "INSERT OR IGNORE INTO events(id, ts, run_id, kind, phase, name, model, engine, route, principal_id,"
    " request_id, ok, error, degraded, prompt_tokens, cached_tokens, cache_write_tokens, completion_tokens,"
    " reasoning_tokens, latency_us, ttft_us, cost_nusd, energy_j, gpu_util_pct, step, loss, text, json)"
    " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";

static const char run_start_sql[] =
    "INSERT INTO runs(run_id, phase, started_at, host, backend, model, config, start_ts)"
    " VALUES(?1,?2,?3,?4,?5,?6,?7,?8)"
    " ON CONFLICT(run_id) DO UPDATE SET phase=coalesce(phase,?2), started_at=coalesce(started_at,?3),"
    " host=coalesce(host,?4), backend=coalesce(backend,?5), model=coalesce(model,?6),"
    " config=coalesce(config,?7), start_ts=coalesce(start_ts,?8)";

static const char run_end_sql[] =
    "INSERT INTO runs(run_id, ended_at, reason, requests, errors, tokens_out, events, dropped,"
    " final_step, final_loss, end_ts) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)"
    " ON CONFLICT(run_id) DO UPDATE SET ended_at=?2, reason=?3, requests=?4, errors=?5, tokens_out=?6,"
    " events=?7, dropped=?8, final_step=?9, final_loss=?10, end_ts=?11";

store *store_open(const char *path, int flags, char *err, size_t errlen)
{
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
        set_err(err, errlen, "%s is not a tally database%s (left unchanged)", path,
                objects ? "" : " (no tables)");
        sqlite3_close(db);
        return NULL;
    }
    if (ver > STORE_VERSION) {
        char v[64];
        snprintf(v, sizeof v, "v%lld, this tally reads up to v%d", (long long)ver, STORE_VERSION);
        set_err(err, errlen, "%s has a newer schema (%s; left unchanged)", path, v);
        sqlite3_close(db);
        return NULL;
    }
    if (fresh && !(flags & STORE_CREATE)) {
        set_err(err, errlen, "%s is empty: not a tally database%s", path, "");
        sqlite3_close(db);
        return NULL;
    }
    if (!(flags & STORE_READONLY)) {
        /* Two processes opening a new database at once: one of them can
         * get SQLITE_BUSY at once (SQLite's deadlock avoidance ignores the
         * busy timeout there), so the setup is retried, boundedly. */
        int failed = 1;
        for (int tries = 0; tries < 100 && failed; tries++) {
            failed = exec(db, "PRAGMA journal_mode=WAL") || exec(db, "PRAGMA synchronous=NORMAL") ||
                     (ver < STORE_VERSION && migrate(db, ver));
            if (failed && sqlite3_errcode(db) != SQLITE_BUSY && sqlite3_errcode(db) != SQLITE_LOCKED) break;
            if (failed) sqlite3_sleep(10);
        }
        if (failed) {
            set_err(err, errlen, "cannot set up %s: %s", path, sqlite3_errmsg(db));
            sqlite3_close(db);
            return NULL;
        }
    }
    store *s = calloc(1, sizeof *s);
    if (!s) {
        sqlite3_close(db);
        return NULL;
    }
    s->db = db;
    if (!(flags & STORE_READONLY) &&
        (sqlite3_prepare_v3(db, insert_sql, -1, SQLITE_PREPARE_PERSISTENT, &s->ins, NULL) != SQLITE_OK ||
         sqlite3_prepare_v3(db, run_start_sql, -1, SQLITE_PREPARE_PERSISTENT, &s->run_start, NULL) != SQLITE_OK ||
         sqlite3_prepare_v3(db, run_end_sql, -1, SQLITE_PREPARE_PERSISTENT, &s->run_end, NULL) != SQLITE_OK)) {
        set_err(err, errlen, "cannot prepare statements on %s: %s", path, sqlite3_errmsg(db));
        store_close(s);
        return NULL;
    }
    return s;
}

void store_close(store *s)
{
    if (!s) return;
    if (s->in_txn) store_rollback(s);
    sqlite3_finalize(s->ins);
    sqlite3_finalize(s->run_start);
    sqlite3_finalize(s->run_end);
    sqlite3_close(s->db);
    free(s);
}

struct sqlite3 *store_db(store *s) { return s ? s->db : NULL; }

const char *store_errmsg(store *s) { return s ? sqlite3_errmsg(s->db) : "no database"; }

int store_begin(store *s)
{
    if (s->in_txn) return 0;
    if (exec(s->db, "BEGIN IMMEDIATE")) return -1;
    s->in_txn = 1;
    return 0;
}

int store_commit(store *s)
{
    if (!s->in_txn) return 0;
    s->in_txn = 0;
    if (exec(s->db, "COMMIT") == 0) return 0;
    exec(s->db, "ROLLBACK");
    return -1;
}

void store_rollback(store *s)
{
    if (!s->in_txn) return;
    s->in_txn = 0;
    exec(s->db, "ROLLBACK");
}

static void bind_sv(sqlite3_stmt *st, int i, sv v)
{
    if (v.p) sqlite3_bind_text(st, i, v.p, (int)v.n, SQLITE_STATIC);
    else sqlite3_bind_null(st, i);
}

static void bind_i64(sqlite3_stmt *st, int i, int present, int64_t v)
{
    if (present) sqlite3_bind_int64(st, i, v);
    else sqlite3_bind_null(st, i);
}

static void bind_dbl(sqlite3_stmt *st, int i, int present, double v)
{
    if (present && v == v) sqlite3_bind_double(st, i, v);
    else sqlite3_bind_null(st, i);
}

int store_insert(store *s, const store_row *r)
{
    sqlite3_stmt *st = s->ins;
    unsigned h = r->has;
    bind_sv(st, 1, r->id);
    bind_dbl(st, 2, h & ROW_TS, r->ts);
    bind_sv(st, 3, r->run_id);
    bind_sv(st, 4, r->kind.p ? r->kind : (sv){"unknown", 7});
    bind_sv(st, 5, r->phase);
    bind_sv(st, 6, r->name);
    bind_sv(st, 7, r->model);
    bind_sv(st, 8, r->engine);
    bind_sv(st, 9, r->route);
    bind_sv(st, 10, r->principal_id);
    bind_sv(st, 11, r->request_id);
    bind_i64(st, 12, h & ROW_OK, r->ok);
    bind_sv(st, 13, r->error);
    bind_sv(st, 14, r->degraded);
    bind_i64(st, 15, h & ROW_PROMPT, r->prompt);
    bind_i64(st, 16, h & ROW_CACHED, r->cached);
    bind_i64(st, 17, h & ROW_CACHE_WRITE, r->cache_write);
    bind_i64(st, 18, h & ROW_COMPLETION, r->completion);
    bind_i64(st, 19, h & ROW_REASONING, r->reasoning);
    bind_i64(st, 20, h & ROW_LATENCY, r->latency_us);
    bind_i64(st, 21, h & ROW_TTFT, r->ttft_us);
    bind_i64(st, 22, h & ROW_COST, r->cost_nusd);
    bind_dbl(st, 23, h & ROW_ENERGY, r->energy_j);
    bind_dbl(st, 24, h & ROW_GPU, r->gpu_util);
    bind_i64(st, 25, h & ROW_STEP, r->step);
    bind_dbl(st, 26, h & ROW_LOSS, r->loss);
    bind_sv(st, 27, r->text);
    bind_sv(st, 28, r->json);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return -1;
    return sqlite3_changes(s->db) > 0 ? 1 : 0;
}

/* A member as compact JSON text, bound as TEXT (NULL when absent). */
static void bind_json_member(sqlite3_stmt *st, int i, const jv *v)
{
    if (!v) {
        sqlite3_bind_null(st, i);
        return;
    }
    if (v->type == JV_STR) {
        sqlite3_bind_text(st, i, v->s, (int)v->n, SQLITE_TRANSIENT);
        return;
    }
    buf b;
    buf_init(&b, 1 << 20);
    jv_write(&b, v);
    if (b.failed) sqlite3_bind_null(st, i);
    else sqlite3_bind_text(st, i, b.p, (int)b.len, SQLITE_TRANSIENT);
    buf_free(&b);
}

static void bind_num_member(sqlite3_stmt *st, int i, const jv *v, int integer)
{
    if (!v || v->type != JV_NUM) sqlite3_bind_null(st, i);
    else if (integer) sqlite3_bind_int64(st, i, jv_int(v, 0));
    else sqlite3_bind_double(st, i, v->num);
}

int store_run_event(store *s, const jv *ev, sv run_id)
{
    const char *kind = jv_str(jv_get(ev, "kind"));
    if (!kind || !run_id.p) return 0;
    sqlite3_stmt *st;
    if (!strcmp(kind, "run_start")) {
        st = s->run_start;
        bind_sv(st, 1, run_id);
        bind_json_member(st, 2, jv_get(ev, "phase"));
        bind_json_member(st, 3, jv_get(ev, "started_at"));
        bind_json_member(st, 4, jv_get(ev, "host"));
        bind_json_member(st, 5, jv_get(ev, "backend"));
        const jv *m = jv_get(ev, "model");
        bind_json_member(st, 6, m && m->type == JV_OBJ ? jv_get(m, "name") : m);
        bind_json_member(st, 7, jv_get(ev, "config"));
        bind_num_member(st, 8, jv_get(ev, "ts"), 0);
    } else if (!strcmp(kind, "run_end")) {
        st = s->run_end;
        const jv *stats = jv_get(ev, "stats");
        bind_sv(st, 1, run_id);
        bind_json_member(st, 2, jv_get(ev, "ended_at"));
        bind_json_member(st, 3, jv_get(ev, "reason"));
        bind_num_member(st, 4, jv_get(stats, "requests"), 1);
        bind_num_member(st, 5, jv_get(stats, "errors"), 1);
        bind_num_member(st, 6, jv_get(stats, "tokens_out"), 1);
        bind_num_member(st, 7, jv_get(stats, "events"), 1);
        bind_num_member(st, 8, jv_get(stats, "dropped"), 1);
        bind_num_member(st, 9, jv_get(ev, "final_step"), 1);
        bind_num_member(st, 10, jv_get(ev, "final_loss"), 0);
        bind_num_member(st, 11, jv_get(ev, "ts"), 0);
    } else {
        return 0;
    }
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int64_t changes_of(sqlite3 *db, const char *sql, int nargs, double a, int64_t b)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
    if (nargs >= 1) sqlite3_bind_double(st, 1, a);
    if (nargs >= 2) sqlite3_bind_int64(st, 2, b);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? sqlite3_changes64(db) : -1;
}

int64_t store_trim(store *s, double before_ts, int64_t max_rows)
{
    int64_t total = 0, n;
    if (before_ts > 0) {
        n = changes_of(s->db, "DELETE FROM events WHERE ts < ?1", 1, before_ts, 0);
        if (n < 0) return -1;
        total += n;
    }
    if (max_rows > 0) {
        n = changes_of(s->db,
                       "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY ts ASC, seq ASC"
                       " LIMIT max(0, (SELECT count(*) FROM events) - ?2))",
                       2, 0, max_rows);
        if (n < 0) return -1;
        total += n;
    }
    return total;
}

int64_t store_drop_text(store *s)
{
    return changes_of(s->db,
                      "UPDATE events SET text = NULL, json = json_remove(json, '$.extra.text', '$.text')"
                      " WHERE text IS NOT NULL OR json_extract(json, '$.extra.text') IS NOT NULL",
                      0, 0, 0);
}

/* ---- rows from parsed events --------------------------------------------- */

static sv sv_of(const jv *v)
{
    if (!v || v->type != JV_STR) return (sv){NULL, 0};
    return (sv){v->s, v->n};
}

static int num_into(const jv *v, int64_t *out)
{
    if (!v || v->type != JV_NUM) return 0;
    *out = jv_int(v, 0);
    return 1;
}

static int dbl_into(const jv *v, double *out)
{
    if (!v || v->type != JV_NUM) return 0;
    *out = v->num;
    return 1;
}

void row_from_json(const jv *ev, store_row *r)
{
    memset(r, 0, sizeof *r);
    r->kind = sv_of(jv_get(ev, "kind"));
    r->phase = sv_of(jv_get(ev, "phase"));
    r->name = sv_of(jv_get(ev, "name"));
    r->id = sv_of(jv_get(ev, "id"));
    r->run_id = sv_of(jv_get(ev, "run_id"));
    if (dbl_into(jv_get(ev, "ts"), &r->ts)) r->has |= ROW_TS;
    if (num_into(jv_get(ev, "step"), &r->step)) r->has |= ROW_STEP;
    if (dbl_into(jv_get(ev, "loss"), &r->loss)) r->has |= ROW_LOSS;
    const jv *x = jv_get(ev, "extra");
    int request = r->kind.p && r->name.p && !strcmp(r->kind.p, "eval") && !strcmp(r->name.p, "request");
    if (request && x && x->type == JV_OBJ) {
        r->model = sv_of(jv_get(x, "model"));
        r->engine = sv_of(jv_get(x, "engine"));
        r->route = sv_of(jv_get(x, "route"));
        r->principal_id = sv_of(jv_get(x, "principal_id"));
        r->request_id = sv_of(jv_get(x, "request_id"));
        r->error = sv_of(jv_get(x, "error"));
        r->degraded = sv_of(jv_get(x, "degraded"));
        r->text = sv_of(jv_get(x, "text"));
        if (num_into(jv_get(x, "prompt_tokens"), &r->prompt)) r->has |= ROW_PROMPT;
        if (num_into(jv_get(x, "cached_tokens"), &r->cached)) r->has |= ROW_CACHED;
        if (num_into(jv_get(x, "cache_write_tokens"), &r->cache_write)) r->has |= ROW_CACHE_WRITE;
        if (num_into(jv_get(x, "completion_tokens"), &r->completion)) r->has |= ROW_COMPLETION;
        if (num_into(jv_get(x, "reasoning_tokens"), &r->reasoning)) r->has |= ROW_REASONING;
        if (num_into(jv_get(x, "latency_us"), &r->latency_us)) r->has |= ROW_LATENCY;
        if (num_into(jv_get(x, "ttft_us"), &r->ttft_us)) r->has |= ROW_TTFT;
        if (num_into(jv_get(x, "cost_nusd"), &r->cost_nusd)) r->has |= ROW_COST;
        if (dbl_into(jv_get(x, "energy_j"), &r->energy_j)) r->has |= ROW_ENERGY;
        if (dbl_into(jv_get(x, "gpu_util_pct"), &r->gpu_util)) r->has |= ROW_GPU;
        const jv *ok = jv_get(x, "ok");
        if (ok && (ok->type == JV_TRUE || ok->type == JV_FALSE)) {
            r->ok = ok->type == JV_TRUE;
            r->has |= ROW_OK;
        } else {
            /* toy/v1 producers before `ok` existed: a request with an error failed. */
            r->ok = r->error.p == NULL;
            r->has |= ROW_OK;
        }
    } else if (r->kind.p && !strcmp(r->kind.p, "error")) {
        r->name = sv_of(jv_get(ev, "type"));
        r->error = sv_of(jv_get(ev, "message"));
        r->request_id = sv_of(jv_get(ev, "request_id"));
    }
}
