/*
 * read_sqlite -- events for queries from SQLite databases: tally's own
 * (rows, or the rollup's cells for whole minutes) and OpenJarvis
 * `telemetry` databases, read as they are.  Opened read-only, never
 * modified.  The CLI reads databases only through here.
 */
#include "read_sqlite.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "store_int.h"

static const char sqlite_magic[16] = "SQLite format 3";

int read_sqlite_kind(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read %s", path);
        return -1;
    }
    char head[16] = {0};
    size_t n = fread(head, 1, 16, f);
    fclose(f);
    if (n < 16 || memcmp(head, sqlite_magic, 16) != 0) return 0;
    sqlite3 *db;
    if (store_open_db_readonly(path, &db, err, errlen) != 0) return -1;
    int kind = -1;
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db,
                           "SELECT (SELECT application_id FROM pragma_application_id),"
                           " (SELECT count(*) FROM sqlite_master WHERE type='table' AND name='telemetry')",
                           -1, &q, NULL) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW) {
        if (sqlite3_column_int64(q, 0) == STORE_APP_ID) kind = READ_SQLITE_TALLY;
        else if (sqlite3_column_int64(q, 1) > 0) kind = READ_SQLITE_OPENJARVIS;
        else snprintf(err, errlen, "%s is neither a tally nor an OpenJarvis database", path);
    } else {
        snprintf(err, errlen, "cannot read database %s: %s", path, sqlite3_errmsg(db));
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    return kind;
}

/* ---- tally databases ------------------------------------------------------------ */

typedef struct db_reader {
    row_fn fn;
    void *ud;
    source_stats *st;
    int stopped;
} db_reader;

static int on_db_row(void *arg, const row *r)
{
    db_reader *d = arg;
    d->st->events++;
    d->st->rows_read++;
    if (d->fn(d->ud, r)) {
        d->stopped = 1;
        return 1;
    }
    return 0;
}

/* Every row, rows with no time first, then in time order (v2 keeps them
 * so; v1 kept them in arrival order, and has an index on ts). */
static int scan_all(sqlite3 *db, int version, int with_json, db_reader *d)
{
    char sel[STORE_SQL_MAX], sql[STORE_SQL_MAX + 64];
    if (store_select(db, version, "events", with_json, sel, sizeof sel)) return -1;
    snprintf(sql, sizeof sql, "%s ORDER BY %s", sel, version >= 2 ? "seq" : "ts, seq");
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) return -1;
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        row r;
        store_row_from_stmt(q, &r);
        if (with_json)
            r.json = (sv){(const char *)sqlite3_column_text(q, SELECT_NCOLS), (size_t)sqlite3_column_bytes(q, SELECT_NCOLS)};
        if (on_db_row(d, &r)) break;
    }
    sqlite3_finalize(q);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

/* Cells of minutes lo..hi (all of them when all). */
static int read_cells(sqlite3 *db, int all, int64_t lo, int64_t hi, cell_fn fn, void *ud, source_stats *st,
                      char *err, size_t errlen, const char *path)
{
    sqlite3_stmt *q;
    const char *sql = all ? "SELECT minute, key, cell FROM rollup"
                          : "SELECT minute, key, cell FROM rollup WHERE minute >= ?1 AND minute <= ?2";
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot read %s: %s", path, sqlite3_errmsg(db));
        return -1;
    }
    if (!all) {
        sqlite3_bind_int64(q, 1, lo);
        sqlite3_bind_int64(q, 2, hi);
    }
    agg_cell c;
    agg_cell_init(&c);
    int rc, bad = 0;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        rollup_key k;
        agg_cell_reset(&c);
        if (rollup_key_decode(sqlite3_column_blob(q, 1), (size_t)sqlite3_column_bytes(q, 1),
                              sqlite3_column_int64(q, 0), &k) ||
            agg_cell_decode_merge(&c, sqlite3_column_blob(q, 2), (size_t)sqlite3_column_bytes(q, 2))) {
            bad = 1;
            break;
        }
        st->cells++;
        st->events += c.events;
        if (fn(ud, &k, &c)) break;
    }
    if (bad) snprintf(err, errlen, "cannot read %s: a cell of its rollup does not decode (minute %lld)", path,
                      (long long)sqlite3_column_int64(q, 0));
    else if (rc != SQLITE_ROW && rc != SQLITE_DONE) snprintf(err, errlen, "cannot read %s: %s", path, sqlite3_errmsg(db));
    sqlite3_finalize(q);
    agg_cell_free(&c);
    return bad || (rc != SQLITE_ROW && rc != SQLITE_DONE) ? -1 : 0;
}

static int scan_time(sqlite3 *db, double lo, double hi, int hi_open, db_reader *d)
{
    if (lo > hi || (hi_open && lo >= hi)) return 0;
    return store_scan_time(db, lo, hi, hi_open, on_db_row, d);
}

/* With cells: the minutes wholly inside [since, until] from the rollup,
 * the two cut ones from their rows.  A minute m holds 60m <= ts < 60(m+1). */
static int read_tally_db(sqlite3 *db, const char *path, const source_opts *o, row_fn fn, void *ud,
                         source_stats *st, char *err, size_t errlen)
{
    int version = store_version(db);
    db_reader d = {fn, ud, st, 0};
    int ranged = o->since || o->until, rc;
    double lo = o->since ? o->since : 0, hi = o->until ? o->until : ROW_TS_MAX;
    if (o->cells && version >= 2) {
        if (!ranged) return read_cells(db, 1, 0, 0, o->cells, ud, st, err, errlen, path);
        double a = ceil(lo / 60), b = floor(hi / 60) - 1;
        if (60 * (a - 1) >= lo) a -= 1;
        if (60 * a < lo) a += 1;
        if (60 * (b + 1) > hi) b -= 1;
        if (60 * (b + 2) <= hi) b += 1;
        if (a <= b) {
            rc = read_cells(db, 0, (int64_t)a, (int64_t)b, o->cells, ud, st, err, errlen, path);
            if (rc == 0) rc = scan_time(db, lo, 60 * a, 1, &d);
            if (rc == 0 && !d.stopped) rc = scan_time(db, 60 * (b + 1), hi, 0, &d);
            if (rc != 0 && !*err) snprintf(err, errlen, "cannot read %s: %s", path, sqlite3_errmsg(db));
            return rc;
        }
    }
    rc = ranged ? scan_time(db, lo, hi, 0, &d) : scan_all(db, version, o->with_json, &d);
    if (rc != 0) snprintf(err, errlen, "cannot read %s: %s", path, sqlite3_errmsg(db));
    return rc;
}

/* ---- OpenJarvis ---------------------------------------------------------------------- */

static int has_col(sqlite3 *db, const char *col) { return store_has_column(db, "telemetry", col); }

/* OpenJarvis's `telemetry` table, read as it is: each row is one request. */
static int read_openjarvis(sqlite3 *db, const char *path, const source_opts *o, row_fn fn, void *ud,
                           source_stats *st, char *err, size_t errlen)
{
    static const char *const cols[] = {"timestamp", "model_id", "engine", "prompt_tokens", "completion_tokens",
                                       "total_tokens", "latency_seconds", "ttft", "cost_usd", "energy_joules",
                                       "gpu_utilization_pct", "throughput_tok_per_sec"};
    char sql[1024] = "SELECT ";
    size_t n = strlen(sql);
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        n += (size_t)snprintf(sql + n, sizeof sql - n, "%s%s", i ? ", " : "", has_col(db, cols[i]) ? cols[i] : "NULL");
    snprintf(sql + n, sizeof sql - n, " FROM telemetry%s",
             (o->since || o->until) ? " WHERE timestamp >= ?1 AND timestamp <= ?2" : "");
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot query %s: %s", path, sqlite3_errmsg(db));
        return -1;
    }
    if (o->since || o->until) {
        sqlite3_bind_double(q, 1, o->since ? o->since : -1e300);
        sqlite3_bind_double(q, 2, o->until ? o->until : 1e300);
    }
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        row e;
        row_clear(&e);
        e.kind = SV_LIT("eval");
        e.phase = SV_LIT("serve");
        e.name = SV_LIT("request");
        e.run_id = (sv){path, strlen(path)};
        e.ok = 1;
        e.has = ROW_OK | ROW_TOTAL;
        if (col_dbl(q, 0, &e.ts)) e.has |= ROW_TS;
        e.model = col_sv(q, 1);
        e.engine = col_sv(q, 2);
        if (col_i64(q, 3, &e.prompt)) e.has |= ROW_PROMPT;
        if (col_i64(q, 4, &e.completion)) e.has |= ROW_COMPLETION;
        col_i64(q, 5, &e.total_tokens); /* its own column; NULL adds nothing, as in SUM() */
        double x;
        if (col_dbl(q, 6, &x)) {
            e.latency_us = x * 1e6;
            e.has |= ROW_LATENCY;
        }
        if (col_dbl(q, 7, &x)) {
            e.ttft_us = x * 1e6;
            e.has |= ROW_TTFT;
        }
        if (col_dbl(q, 8, &e.cost_usd)) e.has |= ROW_COST_USD;
        if (col_dbl(q, 9, &e.energy_j)) e.has |= ROW_ENERGY;
        if (col_dbl(q, 10, &e.gpu_util)) e.has |= ROW_GPU;
        if (col_dbl(q, 11, &e.throughput)) e.has |= ROW_TPUT;
        st->events++;
        st->rows_read++;
        if (fn(ud, &e)) break;
    }
    sqlite3_finalize(q);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        snprintf(err, errlen, "cannot read %s: %s", path, sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

int read_sqlite(const char *path, int kind, const source_opts *o, row_fn fn, void *ud, source_stats *st,
                   char *err, size_t errlen)
{
    sqlite3 *db;
    /* Read-only; a live writer's WAL is honoured whenever the directory
     * lets SQLite share it. */
    if (store_open_db_readonly(path, &db, err, errlen) != 0) return -1;
    sqlite3_busy_timeout(db, 5000);
    int rc = kind == READ_SQLITE_TALLY ? read_tally_db(db, path, o, fn, ud, st, err, errlen)
                       : read_openjarvis(db, path, o, fn, ud, st, err, errlen);
    sqlite3_close(db);
    return rc;
}

