/*
 * store_read -- reading a tally database (see store_int.h)
 */
#include "store_int.h"

#include <stdlib.h>
#include <unistd.h>

int store_has_column(sqlite3 *db, const char *table, const char *column)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2", -1, &st, NULL) !=
        SQLITE_OK)
        return 0;
    sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, column, -1, SQLITE_STATIC);
    int n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
    sqlite3_finalize(st);
    return n > 0;
}

int store_select(sqlite3 *db, int version, const char *table, int with_json, char *out, size_t n)
{
    store_sql_init();
    size_t k = (size_t)snprintf(out, n, "SELECT ");
    for (int i = 0; i < INSERT_COLS - 1 && k < n; i++) {
        const char *name, *type, *expr;
        store_column_at(i, &name, &type, &expr, version);
        /* A named field an older database has no column for (read-only). */
        /* A named field or number an older database has no column for. */
        if (i >= STORE_HEAD_COLS && i < STORE_HEAD_COLS + N_REQUEST_LABELS + N_REQUEST_NUMBERS &&
            !store_has_column(db, table, name))
            expr = "NULL";
        k += (size_t)snprintf(out + k, n - k, "%s%s", i ? ", " : "", expr);
    }
    if (k < n)
        k += (size_t)snprintf(out + k, n - k,
                              ", CASE WHEN kind='run_end' THEN json_extract(json, '$.reason') END,"
                              " CASE WHEN kind='run_start' THEN coalesce(json_extract(json, '$.model.name'),"
                              " json_extract(json, '$.model')) END%s FROM %s",
                              with_json ? ", json" : "", table);
    return k < n ? 0 : -1;
}

/* A database the user may read but not write (a read-only directory or
 * mount): SQLite cannot create the WAL's -shm file beside it, and a plain
 * read-only open fails.  It is then opened "immutable" (no locks, no WAL
 * index), which is right for a database nobody can be writing. */
static int open_ro_uri(const char *path, sqlite3 **db)
{
    char uri[4200];
    size_t k = 0;
    static const char hex[] = "0123456789ABCDEF";
    k += (size_t)snprintf(uri, sizeof uri, "file:");
    for (const char *p = path; *p && k + 4 < sizeof uri; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '?' || c == '#' || c == '%' || c < 0x21 || c >= 0x7f) {
            uri[k++] = '%';
            uri[k++] = hex[c >> 4];
            uri[k++] = hex[c & 15];
        } else {
            uri[k++] = (char)c;
        }
    }
    if (k + 16 >= sizeof uri) return SQLITE_CANTOPEN;
    memcpy(uri + k, "?immutable=1", 13);
    return sqlite3_open_v2(uri, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
}

int store_open_db_readonly(const char *path, struct sqlite3 **out, char *err, size_t errlen)
{
    sqlite3 *db = NULL;
    *out = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_exec(db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL);
    if (rc == SQLITE_OK) {
        *out = db;
        return 0;
    }
    char first[256];
    snprintf(first, sizeof first, "%s", db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    db = NULL;
    /* Only when the file itself is readable: a missing or unreadable file
     * keeps its own message. */
    if (access(path, R_OK) == 0 && open_ro_uri(path, &db) == SQLITE_OK &&
        sqlite3_exec(db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL) == SQLITE_OK) {
        *out = db;
        return 0;
    }
    sqlite3_close(db);
    set_err(err, errlen, "cannot open database %s: %s", path, first);
    return -1;
}




void store_row_from_stmt(sqlite3_stmt *st, row *r)
{
    /* The order of the column list (head, named fields, tail), seq first. */
    row_clear(r);
    int64_t ok;
    int i = 1;
    r->id = col_sv(st, i++);
    if (col_dbl(st, i++, &r->ts)) r->has |= ROW_TS;
    r->run_id = col_sv(st, i++);
    r->kind = col_sv(st, i++);
    r->phase = col_sv(st, i++);
    r->name = col_sv(st, i++);
    for (int k = 0; k < N_REQUEST_LABELS; k++) *FIELD_SV(r, &tally_request_labels[k]) = col_sv(st, i++);
    for (int k = 0; k < N_REQUEST_NUMBERS; k++) {
        const number_def *f = &tally_request_numbers[k];
        void *m = (char *)r + f->row_off;
        int got = f->row_type == FLD_I64 ? col_i64(st, i++, m) : col_dbl(st, i++, m);
        if (got) r->has |= f->rowbit;
    }
    if (col_i64(st, i++, &ok)) {
        r->ok = ok != 0;
        r->has |= ROW_OK;
    }
    r->error = col_sv(st, i++);
    r->degraded = col_sv(st, i++);
    if (col_i64(st, i++, &r->step)) r->has |= ROW_STEP;
    if (col_dbl(st, i++, &r->loss)) r->has |= ROW_LOSS;
    if (col_dbl(st, i++, &r->wall_us)) r->has |= ROW_WALL;
    if (col_i64(st, i++, &r->step_tokens)) r->has |= ROW_STEP_TOKENS;
    r->text = col_sv(st, i++);
    r->reason = col_sv(st, i++);
    r->run_model = col_sv(st, i);
}

int store_scan_time(sqlite3 *db, double lo, double hi, int hi_open, int (*fn)(void *ud, const row *r), void *ud)
{
    int version = store_version(db);
    char sel[STORE_SQL_MAX], sql[STORE_SQL_MAX + 128];
    if (store_select(db, version, "events", 0, sel, sizeof sel)) return -1;
    if (version >= 2) snprintf(sql, sizeof sql, "%s WHERE seq >= ?1 ORDER BY seq", sel);
    else snprintf(sql, sizeof sql, "%s WHERE ts >= ?2 AND ts <= ?3 ORDER BY ts, seq", sel);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
    int64_t lo_base = lo > 0 ? base_of_ts(lo) : 0, hi_end = base_of_ts(hi) + STORE_SLOTS, prev = lo_base - 1;
    if (version >= 2) sqlite3_bind_int64(st, 1, lo_base);
    else {
        sqlite3_bind_double(st, 2, lo);
        sqlite3_bind_double(st, 3, hi);
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (version >= 2) {
            /* Past the last time's own slots, only a run of taken slots
             * (events that spilled over) can still hold one of ours. */
            int64_t seq = sqlite3_column_int64(st, 0);
            if (seq >= hi_end && seq != prev + 1) break;
            prev = seq;
        }
        row r;
        store_row_from_stmt(st, &r);
        if (!(r.has & ROW_TS) || r.ts < lo || r.ts > hi || (hi_open && r.ts >= hi)) continue;
        if (fn(ud, &r)) break;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}
