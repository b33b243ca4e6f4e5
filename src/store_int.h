/*
 * store_int -- what the store's files share (never installed): the
 * connection's state, the column layout, and small SQLite helpers.
 *
 *   store.c         open and close, schema (from one list of columns) and
 *                   migration, prepared statements, transactions
 *   store_insert.c  where an event goes (seq), inserts, the rollup's
 *                   cells, the runs table
 *   store_read.c    reading: the SELECT of every column, rows from it,
 *                   time scans, read-only opening, and the sources the
 *                   CLI reads (tally and OpenJarvis databases)
 *   store_trim.c    retention and dropping text; rebuilding cells
 *   store_ckpt.c    the checkpointer thread
 */
#ifndef TALLY_STORE_INT_H
#define TALLY_STORE_INT_H

#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "agg.h"
#include "buf.h"
#include "fields.h"
#include "idset.h"
#include "rollup.h"
#include "store.h"
#include "util.h"

#define PAGE_SIZE 16384           /* new databases: fewer, larger pages for rows of ~500 bytes */
#define CK_START_FRAMES 256       /* wake the checkpointer (4 MiB of log) */
#define CK_MAX_FRAMES 16384       /* the writer waits for the log to be copied (256 MiB) */
#define CK_WAIT_MS 2000
#define ROLLUP_MAX_CELLS 65536    /* written out early beyond this, within the transaction */

typedef struct ckpt {
    pthread_t th;
    sqlite3 *db;
    pthread_mutex_t mu;
    pthread_cond_t cv, done_cv;
    int frames;               /* log size after the last commit */
    int stop, want_all;       /* requests */
    uint64_t passes;          /* completed checkpoints */
    int all_copied;           /* the last pass copied the whole log */
} ckpt;

struct store {
    sqlite3 *db;
    sqlite3_stmt *ins, *ins_many, *near, *at, *upsert, *run_start, *run_end;
    int in_txn;
    int64_t last_seq, last_base; /* this connection's last insert and its first slot */
    int have_last;
    /* STORE_DEDUP in a transaction: rows at or past `fresh_from` (beyond
     * every row there was when it began) can only repeat this
     * transaction's own, whose ids are kept here (fresh_ok: usable). */
    int64_t fresh_from, txn_max; /* txn_max: the largest slot this transaction took */
    int64_t found_seq, found_base; /* STORE_DEDUP: where the last repeated id was found */
    int have_found;
    idset fresh_ids;
    int fresh_ok, fresh_tried;
    rollup *cells;            /* the open transaction's rollup */
    buf cellbuf;
    ckpt *ck;
    int bulk;                 /* STORE_NEW_BULK on a new database: WAL at close */
    char errbuf[320];         /* store_errmsg()'s text */
};

/* The events table's columns (store.c): head, one per named request
 * field and one per request number (fields.h), tail -- the order of
 * CREATE, INSERT, SELECT, bind_row() and store_row_from_stmt(). */
#define STORE_HEAD_COLS 7
#define STORE_TAIL_COLS 9
#define INSERT_COLS (STORE_HEAD_COLS + N_REQUEST_LABELS + N_REQUEST_NUMBERS + STORE_TAIL_COLS)
#define FRESH_MAX ((size_t)1 << 14) /* ids kept for STORE_DEDUP's fresh rows: 256 KiB of hashes, which stay in cache (8% faster than 2^16) */
#define INSERT_MANY 32            /* rows per statement for batches (25% faster than one) */
/* SELECT: every column but json, then run_end's reason and run_start's
 * model; with_json adds json as column SELECT_NCOLS. */
#define SELECT_NCOLS (INSERT_COLS - 1 + 2)

/* store.c */
void store_sql_init(void);
/* Column i: name, type, and what a database of schema `version` has. */
void store_column_at(int i, const char **name, const char **type, const char **expr, int version);
extern char store_sql_insert_head[], store_sql_insert_row[], store_sql_insert[], store_sql_upsert[];
extern char store_sql_events[], store_sql_rollup[];

/* store_insert.c */
int store_write_cells(store *s);
void store_cell_merge_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv);

/* store_read.c */
int store_has_column(sqlite3 *db, const char *table, const char *column);

/* store_trim.c: nothing shared. */

/* store_ckpt.c */
ckpt *store_ckpt_start(store *s, const char *path);
void store_ckpt_stop(store *s);
void store_ckpt_bound(store *s);

/* ---- small helpers ------------------------------------------------------------ */

__attribute__((format(printf, 3, 4))) static inline void set_err(char *err, size_t n, const char *fmt, ...)
{
    if (!err || !n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

static inline int exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

static inline int pragma_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : -1;
}

static inline void bind_sv(sqlite3_stmt *st, int i, sv v)
{
    if (v.p) sqlite3_bind_text(st, i, v.p, (int)v.n, SQLITE_STATIC);
    else sqlite3_bind_null(st, i);
}

static inline void bind_i64(sqlite3_stmt *st, int i, int present, int64_t v)
{
    if (present) sqlite3_bind_int64(st, i, v);
    else sqlite3_bind_null(st, i);
}

static inline sv col_sv(sqlite3_stmt *st, int i)
{
    const char *p = (const char *)sqlite3_column_text(st, i);
    return p ? (sv){p, (size_t)sqlite3_column_bytes(st, i)} : (sv){NULL, 0};
}

static inline int col_dbl(sqlite3_stmt *st, int i, double *out)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL) return 0;
    *out = sqlite3_column_double(st, i);
    return 1;
}

static inline int col_i64(sqlite3_stmt *st, int i, int64_t *out)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL) return 0;
    *out = sqlite3_column_int64(st, i);
    return 1;
}

static inline int64_t base_of_ts(double ts) { return (int64_t)llround(ts * 1e6) * STORE_SLOTS; }

#endif
