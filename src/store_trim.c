/*
 * store_trim -- retention by age and by count, dropping stored text; the rollup's cells of the minutes touched are rebuilt from the rows that remain
 */
#include "store_int.h"

#include <stdlib.h>

static int64_t changes_of(sqlite3 *db, const char *sql, int64_t a, int64_t b)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
    sqlite3_bind_int64(st, 1, a);
    sqlite3_bind_int64(st, 2, b);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? sqlite3_changes64(db) : -1;
}

typedef struct rebuild {
    store *s;
    int64_t lo, hi;
    int failed;
} rebuild;

static int rebuild_add(void *ud, const row *r)
{
    rebuild *b = ud;
    int64_t m = rollup_minute(r);
    if (m < b->lo || m > b->hi) return 0;
    int full = rollup_add(b->s->cells, r);
    if (full < 0 || (full > 0 && store_write_cells(b->s))) {
        b->failed = 1;
        return 1;
    }
    return 0;
}

/* Recomputes the rollup's cells of minutes lo..hi from the rows there. */
static int rebuild_minutes(store *s, int64_t lo, int64_t hi)
{
    if (changes_of(s->db, "DELETE FROM rollup WHERE minute >= ?1 AND minute <= ?2", lo, hi) < 0) return -1;
    rebuild b = {s, lo, hi, 0};
    if (lo <= -1) {
        sqlite3_stmt *st;
        char sel[STORE_SQL_MAX], sql[STORE_SQL_MAX + 128];
        if (store_select(s->db, STORE_VERSION, "events", 0, sel, sizeof sel)) return -1;
        snprintf(sql, sizeof sql, "%s WHERE seq < 0 ORDER BY seq", sel);
        if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
        int rc;
        while (!b.failed && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            row r;
            store_row_from_stmt(st, &r);
            rebuild_add(&b, &r);
        }
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE && rc != SQLITE_ROW) return -1;
    }
    if (hi >= 0 && !b.failed &&
        store_scan_time(s->db, 60.0 * (double)(lo > 0 ? lo : 0), 60.0 * (double)(hi + 1), 1, rebuild_add, &b))
        return -1;
    return b.failed || store_write_cells(s) ? -1 : 0;
}

static int64_t minute_of(double ts)
{
    row r;
    row_clear(&r);
    r.ts = ts;
    r.has = ROW_TS;
    return rollup_minute(&r);
}

/* Events before `cut`: every row below the cut's first slot, and those
 * that spilled past it. */
static int64_t trim_age(store *s, double cut)
{
    int64_t base = base_of_ts(cut);
    int64_t n = changes_of(s->db, "DELETE FROM events WHERE seq >= ?1 AND seq < ?2", 0, base);
    if (n < 0) return -1;
    /* Rows at or past the cut's first slot that are older all the same:
     * the cut's own microsecond, and events that spilled over into it. */
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT seq, ts FROM events WHERE seq >= ?1 ORDER BY seq", -1, &st, NULL) !=
        SQLITE_OK)
        return -1;
    int64_t del[256];
    int nd, rc;
    do {
        sqlite3_bind_int64(st, 1, base);
        int64_t prev = base - 1;
        nd = 0;
        while (nd < 256 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            int64_t seq = sqlite3_column_int64(st, 0);
            if (seq >= base + STORE_SLOTS && seq != prev + 1) break;
            prev = seq;
            if (sqlite3_column_type(st, 1) != SQLITE_NULL && sqlite3_column_double(st, 1) < cut) del[nd++] = seq;
        }
        sqlite3_reset(st);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) break;
        for (int i = 0; i < nd; i++) {
            int64_t k = changes_of(s->db, "DELETE FROM events WHERE seq = ?1", del[i], 0);
            if (k < 0) {
                rc = SQLITE_ERROR;
                break;
            }
            n += k;
        }
    } while (nd == 256 && rc != SQLITE_ERROR);
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return -1;
    if (n > 0 && rebuild_minutes(s, 0, minute_of(cut))) return -1;
    return n;
}

/* Keeps the newest max_rows (in seq order: rows with no time first, then
 * by time). */
static int64_t trim_rows(store *s, int64_t max_rows)
{
    int64_t total = 0, cut = 0;
    if (pragma_int(s->db, "SELECT count(*) FROM events", &total)) return -1;
    if (total <= max_rows) return 0;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT seq FROM events ORDER BY seq LIMIT 1 OFFSET ?1", -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, total - max_rows);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) cut = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW) return -1;
    /* The minutes the deleted rows counted in. */
    if (sqlite3_prepare_v2(s->db, "SELECT min(ts), max(ts), min(seq) < 0 FROM events WHERE seq < ?1", -1, &st,
                           NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(st, 1, cut);
    double tmin = 0, tmax = 0;
    int timed = 0, untimed = 0;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        timed = sqlite3_column_type(st, 0) != SQLITE_NULL;
        tmin = sqlite3_column_double(st, 0);
        tmax = sqlite3_column_double(st, 1);
        untimed = sqlite3_column_int(st, 2);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW) return -1;
    int64_t n = changes_of(s->db, "DELETE FROM events WHERE seq < ?1", cut, 0);
    if (n < 0) return -1;
    if (untimed && rebuild_minutes(s, -1, -1)) return -1;
    if (timed && rebuild_minutes(s, minute_of(tmin), minute_of(tmax))) return -1;
    return n;
}

int64_t store_trim(store *s, double before_ts, int64_t max_rows)
{
    int own = !s->in_txn;
    if (own && store_begin(s)) return -1;
    /* This transaction's own cells first: rebuilding reads the rows. */
    int64_t total = store_write_cells(s) ? -1 : 0, n;
    if (total == 0 && before_ts > 0) {
        n = trim_age(s, before_ts);
        total = n < 0 ? -1 : total + n;
    }
    if (total >= 0 && max_rows > 0) {
        n = trim_rows(s, max_rows);
        total = n < 0 ? -1 : total + n;
    }
    if (own) {
        if (total < 0) store_rollback(s);
        else if (store_commit(s)) total = -1;
    }
    return total;
}

int64_t store_drop_text(store *s)
{
    return changes_of(s->db,
                      "UPDATE events SET text = NULL, json = json_remove(json, '$.extra.text', '$.text')"
                      " WHERE text IS NOT NULL OR json_extract(json, '$.extra.text') IS NOT NULL",
                      0, 0);
}
