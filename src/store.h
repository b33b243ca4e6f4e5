/*
 * store -- tally's SQLite database: schema, migration, inserts, the
 * per-minute rollup, retention.  See docs/schema.md.
 *
 * Used by the SQLite sink (on its database thread), `tally import` and
 * `tally trim`; the read helpers at the end by `tally stats` and `runs`.
 * A database is tally's when its PRAGMA application_id is STORE_APP_ID;
 * its schema version is PRAGMA user_version and is migrated forward when
 * opened for writing.  A database that is someone else's, or newer than
 * this build, is refused and left untouched.
 *
 * Rows are kept in time order: an event's `seq` (the rowid) is its time in
 * microseconds times STORE_SLOTS, plus the first slot free at that time.
 * So time ranges, retention and finding an event again need no index, and
 * an insert touches one b-tree instead of five -- the difference between
 * about 250,000 and 600,000 rows a second here (docs/schema.md).
 */
#ifndef TALLY_STORE_H
#define TALLY_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"
#include "row.h"

#define STORE_APP_ID 0x54414c59   /* "TALY" */
#define STORE_VERSION 3
#define STORE_SLOTS 1024          /* events per microsecond before they spill over */

struct sqlite3;
struct sqlite3_stmt;
typedef struct store store;

enum {
    STORE_CREATE = 1,       /* create the file and schema when missing */
    STORE_READONLY = 2,
    STORE_CHECKPOINTER = 4, /* checkpoint the WAL from a thread of its own */
    /* A database this open creates is written with a rollback journal
     * (each page written once, where WAL writes it twice: to the log, then
     * to the database) and turned to WAL by store_close.  For bulk loads
     * (import) into a new file: while it is written, other connections wait
     * for its transactions.  An existing database is opened as usual. */
    STORE_NEW_BULK = 8,
};

/* Opens (and with STORE_CREATE creates or migrates) a tally database.
 * NULL on failure with a one-line reason in err. */
store *store_open(const char *path, int flags, char *err, size_t errlen);
void store_close(store *s);
struct sqlite3 *store_db(store *s);
const char *store_errmsg(store *s);
/* 1 when the last failure was another connection holding the lock past
 * the busy timeout (worth trying again), else 0. */
int store_busy(store *s);

int store_begin(store *s);                 /* BEGIN IMMEDIATE; 0 or -1 */
/* Writes the transaction's rollup cells, then COMMIT; 0, or -1 (rolled back). */
int store_commit(store *s);
void store_rollback(store *s);

/* Inserts one event and adds it to the transaction's rollup.  Flags:
 * STORE_DEDUP: an event whose id is already stored at its time is not
 * inserted again (import); STORE_COUNTED: the caller keeps the rollup of
 * what it inserts itself and hands it over with store_add_cells().
 * Returns 1 inserted, 0 already there, -1 error. */
enum { STORE_DEDUP = 1, STORE_COUNTED = 2 };
int store_insert(store *s, const row *r, int flags);
/* Inserts many events of one writer, in time order, as store_insert()
 * would one by one, several per statement (those that need no search for
 * their id: all of them without STORE_DEDUP).  0, with the number
 * inserted in *stored (may be NULL), or -1. */
int store_insert_rows(store *s, const row *rows, size_t n, int flags, size_t *stored);
/* Upserts a rollup's cells in the open transaction (for STORE_COUNTED). */
struct rollup;
int store_add_cells(store *s, struct rollup *cells);

/* Records a run_start (is_end 0) or run_end line in the runs table
 * (SQLite reads its members). */
int store_run_line(store *s, sv run_id, int is_end, sv line);

/* Retention: deletes events older than `before_ts` (Unix seconds; 0 = no
 * age limit), then the oldest beyond `max_rows` (0 = no limit), and
 * rebuilds the rollup's cells of the minutes touched.  Returns the rows
 * deleted or -1.  Runs inside the caller's transaction when there is one,
 * else in its own. */
int64_t store_trim(store *s, double before_ts, int64_t max_rows);
/* Removes stored request text (the column and extra.text in the JSON). */
int64_t store_drop_text(store *s);

/* ---- reading: any connection to a tally database ------------------------- */

/* Opens any SQLite database for reading only -- also one in a directory
 * or mount the user cannot write (then as immutable).  0, or -1 with a
 * one-line reason in err. */
int store_open_db_readonly(const char *path, struct sqlite3 **db, char *err, size_t errlen);

/* The schema version of an open tally database (0 when unreadable). */
int store_version(struct sqlite3 *db);

/* Fills r from a row of store_select() (strings point into the
 * statement and stay valid until it steps again). */
void store_row_from_stmt(struct sqlite3_stmt *st, row *r);
/* The SELECT for a database of `version` (v1 kept step times in the JSON). */
/* The SELECT of every event column (but json, unless `with_json`: then
 * last) from `table` of a database of schema
 * `version`: NULL for named fields it has no column for, v1's step times
 * from the JSON.  0, or -1 when out is too small. */
int store_select(struct sqlite3 *db, int version, const char *table, int with_json, char *out, size_t n);
#define STORE_SQL_MAX 3072

/* Calls fn for every event with lo <= ts <= hi (ts < hi when hi_open), in
 * time order; fn returning non-zero stops.  0, or -1 on a database error. */
int store_scan_time(struct sqlite3 *db, double lo, double hi, int hi_open, int (*fn)(void *ud, const row *r),
                    void *ud);

/* The first seq an event at `ts` may take. */
int64_t store_seq_base(const row *r);

#endif
