/*
 * store -- tally's SQLite database: schema, migration, inserts, retention.
 *
 * Used by the SQLite sink (on the writer thread), `tally import` and
 * `tally trim`.  A database is tally's when its PRAGMA application_id is
 * STORE_APP_ID; its schema version is PRAGMA user_version and is migrated
 * forward on open.  A database that is someone else's, or newer than this
 * build, is refused and left untouched.  See docs/schema.md.
 */
#ifndef TALLY_STORE_H
#define TALLY_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"

#define STORE_APP_ID 0x54414c59   /* "TALY" */
#define STORE_VERSION 1

typedef struct sv {
    const char *p;     /* NULL = SQL NULL */
    size_t n;
} sv;

/* Which numeric columns are present. */
enum {
    ROW_PROMPT = 1 << 0, ROW_CACHED = 1 << 1, ROW_CACHE_WRITE = 1 << 2, ROW_COMPLETION = 1 << 3,
    ROW_REASONING = 1 << 4, ROW_LATENCY = 1 << 5, ROW_TTFT = 1 << 6, ROW_COST = 1 << 7,
    ROW_ENERGY = 1 << 8, ROW_GPU = 1 << 9, ROW_STEP = 1 << 10, ROW_LOSS = 1 << 11, ROW_TS = 1 << 12,
    ROW_OK = 1 << 13,
};

typedef struct store_row {
    sv id, run_id, kind, phase, name, model, engine, route, principal_id, request_id;
    sv error, degraded, text, json;
    unsigned has;
    int ok;
    double ts, energy_j, gpu_util, loss;
    int64_t prompt, cached, cache_write, completion, reasoning, latency_us, ttft_us, cost_nusd, step;
} store_row;

typedef struct store store;

enum { STORE_CREATE = 1, STORE_READONLY = 2 };

/* Opens (and with STORE_CREATE creates or migrates) a tally database.
 * NULL on failure with a one-line reason in err. */
store *store_open(const char *path, int flags, char *err, size_t errlen);
void store_close(store *s);
struct sqlite3 *store_db(store *s);

int store_begin(store *s);                 /* BEGIN IMMEDIATE; 0 or -1 */
int store_commit(store *s);                /* 0 or -1 (rolled back) */
void store_rollback(store *s);

/* 1 inserted, 0 already there (same id), -1 error. */
int store_insert(store *s, const store_row *r);

/* Records a run_start / run_end event (the parsed line) in the runs table. */
int store_run_event(store *s, const jv *ev, sv run_id);

/* Retention: deletes events older than `before_ts` (Unix seconds; 0 = no
 * age limit) and the oldest beyond `max_rows` (0 = no limit).  Returns the
 * rows deleted or -1. */
int64_t store_trim(store *s, double before_ts, int64_t max_rows);
/* Removes stored request text (the column and extra.text in the JSON). */
int64_t store_drop_text(store *s);

const char *store_errmsg(store *s);

/* Fills a row from a parsed toy/v1 event.  Strings point into `ev`. */
void row_from_json(const jv *ev, store_row *r);

#endif
