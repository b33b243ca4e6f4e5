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
#include "store.h"

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
    sqlite3_stmt *ins, *ins_many, *near, *upsert, *run_start, *run_end;
    int in_txn;
    int64_t last_seq, last_base; /* this connection's last insert and its first slot */
    int have_last;
    rollup *cells;            /* the open transaction's rollup */
    buf cellbuf;
    ckpt *ck;
    char errbuf[320];         /* store_errmsg()'s text */
};

/* ---- schema --------------------------------------------------------------- */

#define RUNS_V1                                                                                            \
    "CREATE TABLE runs("                                                                                   \
    " run_id TEXT PRIMARY KEY, phase TEXT, started_at TEXT, ended_at TEXT, reason TEXT,"                  \
    " host TEXT, backend TEXT, model TEXT, config TEXT,"                                                   \
    " requests INTEGER, errors INTEGER, tokens_out INTEGER, events INTEGER, dropped INTEGER,"             \
    " final_step INTEGER, final_loss REAL, start_ts REAL, end_ts REAL)"

static const char near_sql[] = "SELECT seq, id FROM events WHERE seq >= ?1 ORDER BY seq";

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
    {"prompt_tokens", "INTEGER", NULL},
    {"cached_tokens", "INTEGER", NULL},
    {"cache_write_tokens", "INTEGER", NULL},
    {"completion_tokens", "INTEGER", NULL},
    {"reasoning_tokens", "INTEGER", NULL},
    {"latency_us", "INTEGER", NULL},
    {"ttft_us", "INTEGER", NULL},
    {"cost_nusd", "INTEGER", NULL},
    {"energy_j", "REAL", NULL},
    {"gpu_util_pct", "REAL", NULL},
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
#define N_HEAD ((int)(sizeof head_cols / sizeof head_cols[0]))
#define N_TAIL ((int)(sizeof tail_cols / sizeof tail_cols[0]))
#define INSERT_COLS (N_HEAD + N_REQUEST_LABELS + N_TAIL)
#define INSERT_MANY 32            /* rows per statement for batches (25% faster than one) */
/* SELECT: every column but json, then run_end's reason and run_start's model. */
#define SELECT_NCOLS (INSERT_COLS - 1 + 2)  /* with_json: json is column SELECT_NCOLS */

static char sql_events[2048], sql_rollup[1024], sql_insert_head[1536], sql_insert_row[256], sql_insert[2048];
static char sql_upsert[1024];
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
static void column_at(int i, const char **name, const char **type, const char **expr, int version)
{
    const col *c = NULL;
    if (i < N_HEAD) c = &head_cols[i];
    else if (i >= N_HEAD + N_REQUEST_LABELS) c = &tail_cols[i - N_HEAD - N_REQUEST_LABELS];
    if (c) {
        *name = c->name;
        *type = c->type;
        *expr = version == 1 && c->v1 ? c->v1 : c->name;
        return;
    }
    const field_def *f = &tally_request_labels[i - N_HEAD];
    *name = f->key;
    *type = "TEXT";
    *expr = f->key;
}

static void build_sql(void)
{
    const char *name, *type, *expr;
    CAT(sql_events, "CREATE TABLE events(");
    CAT(sql_insert_head, "INSERT OR FAIL INTO events(");
    CAT(sql_insert_row, "(");
    for (int i = 0; i < INSERT_COLS; i++) {
        column_at(i, &name, &type, &expr, STORE_VERSION);
        if (i) {
            CAT(sql_events, ", ");
            CAT(sql_insert_head, ", ");
            CAT(sql_insert_row, ",");
        }
        CAT(sql_events, name);
        CAT(sql_events, " ");
        CAT(sql_events, type);
        CAT(sql_insert_head, name);
        CAT(sql_insert_row, "?");
    }
    CAT(sql_events, ")");
    /* OR FAIL: a row that conflicts stops the statement and keeps the rows
     * before it, so a statement of many rows needs no statement journal. */
    CAT(sql_insert_head, ") VALUES");
    CAT(sql_insert_row, ")");
    CAT(sql_insert, sql_insert_head);
    CAT(sql_insert, sql_insert_row);
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
    CAT(sql_rollup, "CREATE TABLE rollup(minute INTEGER NOT NULL, key BLOB NOT NULL, run_id TEXT, kind TEXT,"
                    " phase TEXT");
    for (int i = 0; i < N_REQUEST_LABELS; i++) {
        if (!(tally_request_labels[i].flags & FLD_ROLLUP)) continue;
        CAT(sql_rollup, ", ");
        CAT(sql_rollup, tally_request_labels[i].key);
        CAT(sql_rollup, " TEXT");
    }
    CAT(sql_rollup, ", ok INTEGER, degraded TEXT, events INTEGER NOT NULL, cell BLOB NOT NULL,"
                    " PRIMARY KEY(minute, key))");
    char tail[256];
    snprintf(tail, sizeof tail, ",?%d,?%d,?%d,?%d)", np + 1, np + 2, np + 3, np + 4);
    CAT(sql_upsert, "INSERT INTO rollup(minute, key, run_id, kind, phase");
    CAT(sql_upsert, labels);
    CAT(sql_upsert, ", ok, degraded, events, cell) VALUES(?1,?2,?3,?4,?5");
    CAT(sql_upsert, params);
    CAT(sql_upsert, tail);
    CAT(sql_upsert, " ON CONFLICT(minute, key) DO UPDATE SET events = events + excluded.events,"
                    " cell = tally_cell_merge(cell, excluded.cell)");
}

static void sql_init(void) { pthread_once(&sql_once, build_sql); }

/* ---- small helpers ---------------------------------------------------------- */

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

int store_version(sqlite3 *db)
{
    int64_t v = 0;
    return pragma_int(db, "PRAGMA user_version", &v) == 0 ? (int)v : 0;
}

/* ---- columns that come and go ------------------------------------------------- */

static int has_column(sqlite3 *db, const char *table, const char *column)
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

/* A column for every named field (fields.h) the tables lack: a field added
 * to the table gets its column the next time a writer opens the database,
 * without a schema version of its own.  Rows stored before keep theirs in
 * the JSON only. */
static int add_label_columns(sqlite3 *db)
{
    char sql[256];
    for (int i = 0; i < N_REQUEST_LABELS; i++) {
        const field_def *f = &tally_request_labels[i];
        if (!has_column(db, "events", f->key)) {
            snprintf(sql, sizeof sql, "ALTER TABLE events ADD COLUMN %s TEXT", f->key);
            if (exec(db, sql)) return -1;
        }
        if ((f->flags & FLD_ROLLUP) && !has_column(db, "rollup", f->key)) {
            snprintf(sql, sizeof sql, "ALTER TABLE rollup ADD COLUMN %s TEXT", f->key);
            if (exec(db, sql)) return -1;
        }
    }
    return 0;
}

int store_select(sqlite3 *db, int version, const char *table, int with_json, char *out, size_t n)
{
    sql_init();
    size_t k = (size_t)snprintf(out, n, "SELECT ");
    for (int i = 0; i < INSERT_COLS - 1 && k < n; i++) {
        const char *name, *type, *expr;
        column_at(i, &name, &type, &expr, version);
        /* A named field an older database has no column for (read-only). */
        if (i >= N_HEAD && i < N_HEAD + N_REQUEST_LABELS && !has_column(db, table, name)) expr = "NULL";
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

/* ---- where events go -------------------------------------------------------- */

static int64_t base_of_ts(double ts) { return (int64_t)llround(ts * 1e6) * STORE_SLOTS; }

int64_t store_seq_base(const row *r)
{
    if (r->has & ROW_TS) return base_of_ts(r->ts);
    /* No time: below zero, spread by the id (FNV-1a, 40 bits). */
    uint64_t h = fnv1a(FNV_SEED, r->id.p, r->id.n);
    return -(int64_t)(((h >> 24) + 1) * STORE_SLOTS);
}

/* Reads the run of rows from `base`: finds the first free slot (into
 * *slot) and, with `id`, whether that id is among them.  Returns 1 found,
 * 0 not, -1 error.  The run ends at the first gap past the base's own
 * STORE_SLOTS slots. */
static int find_slot(store *s, int64_t base, sv id, int64_t *slot)
{
    sqlite3_stmt *st = s->near;
    sqlite3_bind_int64(st, 1, base);
    int64_t expect = base, prev = base - 1;
    int have_free = 0, found = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(st, 0);
        if (seq >= base + STORE_SLOTS && seq != prev + 1) break;
        prev = seq;
        if (!have_free) {
            if (seq == expect) expect++;
            else have_free = 1;
        }
        if (id.p && (size_t)sqlite3_column_bytes(st, 1) == id.n &&
            memcmp(sqlite3_column_text(st, 1), id.p, id.n) == 0) {
            found = 1;
            break;
        }
        if (have_free && !id.p) break;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return -1;
    *slot = expect;
    return found;
}

static inline void put_sv(sqlite3_stmt *st, int i, sv v)
{
    if (v.p) sqlite3_bind_text(st, i, v.p, (int)v.n, SQLITE_STATIC);
}

static inline void put_i64(sqlite3_stmt *st, int i, int present, int64_t v)
{
    if (present) sqlite3_bind_int64(st, i, v);
}

static inline void put_dbl(sqlite3_stmt *st, int i, int present, double v)
{
    if (present && v == v) sqlite3_bind_double(st, i, v);
}

/* A number that is usually whole (microseconds, tokens) as an integer when
 * it is one, so INTEGER columns hold integers. */
static inline void put_num(sqlite3_stmt *st, int i, int present, double v)
{
    if (present && v == v && v >= -9.2e18 && v <= 9.2e18 && v == (double)(int64_t)v)
        sqlite3_bind_int64(st, i, (int64_t)v);
    else put_dbl(st, i, present, v);
}

/* Binds r to parameters at..at+INSERT_COLS-1 of an insert whose bindings
 * were cleared: absent fields are left NULL, not bound one by one (a
 * third of the binding calls for a request). */
static void bind_row(sqlite3_stmt *st, int at, int64_t seq, const row *r)
{
    /* The order of the column list (head, named fields, tail). */
    int i = at;
    unsigned h = r->has;
    sqlite3_bind_int64(st, i++, seq);
    put_sv(st, i++, r->id.p ? r->id : SV_LIT(""));
    put_dbl(st, i++, h & ROW_TS, r->ts);
    put_sv(st, i++, r->run_id);
    put_sv(st, i++, r->kind.p ? r->kind : SV_LIT("unknown"));
    put_sv(st, i++, r->phase);
    put_sv(st, i++, r->name);
    for (int k = 0; k < N_REQUEST_LABELS; k++) put_sv(st, i++, *FIELD_CSV(r, &tally_request_labels[k]));
    put_i64(st, i++, h & ROW_OK, r->ok);
    put_sv(st, i++, r->error);
    put_sv(st, i++, r->degraded);
    put_i64(st, i++, h & ROW_PROMPT, r->prompt);
    put_i64(st, i++, h & ROW_CACHED, r->cached);
    put_i64(st, i++, h & ROW_CACHE_WRITE, r->cache_write);
    put_i64(st, i++, h & ROW_COMPLETION, r->completion);
    put_i64(st, i++, h & ROW_REASONING, r->reasoning);
    put_num(st, i++, h & ROW_LATENCY, r->latency_us);
    put_num(st, i++, h & ROW_TTFT, r->ttft_us);
    put_i64(st, i++, h & ROW_COST, r->cost_nusd);
    put_dbl(st, i++, h & ROW_ENERGY, r->energy_j);
    put_dbl(st, i++, h & ROW_GPU, r->gpu_util);
    put_i64(st, i++, h & ROW_STEP, r->step);
    put_dbl(st, i++, h & ROW_LOSS, r->loss);
    put_num(st, i++, h & ROW_WALL, r->wall_us);
    put_i64(st, i++, h & ROW_STEP_TOKENS, r->step_tokens);
    put_sv(st, i++, r->text);
    put_sv(st, i++, r->json.p ? r->json : SV_LIT("{}"));
}

/* ---- the rollup's cells ----------------------------------------------------- */

/* tally_cell_merge(a, b): the rollup's upsert adds a transaction's cell to
 * the stored one. */
static void cell_merge_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    agg_cell c;
    agg_cell_init(&c);
    buf b;
    buf_init(&b, (size_t)16 << 20);
    if (agg_cell_decode_merge(&c, sqlite3_value_blob(argv[0]), (size_t)sqlite3_value_bytes(argv[0])) ||
        agg_cell_decode_merge(&c, sqlite3_value_blob(argv[1]), (size_t)sqlite3_value_bytes(argv[1]))) {
        sqlite3_result_error(ctx, "tally: a cell of the rollup does not decode (the database is damaged)", -1);
    } else {
        agg_cell_encode(&c, &b);
        if (b.failed) sqlite3_result_error_nomem(ctx);
        else sqlite3_result_blob(ctx, b.p, (int)b.len, SQLITE_TRANSIENT);
    }
    buf_free(&b);
    agg_cell_free(&c);
}

static int upsert_cell(void *ud, const rollup_key *k, const agg_cell *c)
{
    store *s = ud;
    sqlite3_stmt *st = s->upsert;
    buf_reset(&s->cellbuf);
    agg_cell_encode(c, &s->cellbuf);
    if (s->cellbuf.failed) return -1;
    /* The order of sql_upsert: minute, key, run, kind, phase, the rollup's
     * named fields, ok, degraded, events, cell. */
    int i = 1;
    sqlite3_bind_int64(st, i++, k->minute);
    sqlite3_bind_blob(st, i++, k->bytes, (int)k->len, SQLITE_STATIC);
    bind_sv(st, i++, k->s[RK_RUN]);
    bind_sv(st, i++, k->s[RK_KIND]);
    bind_sv(st, i++, k->s[RK_PHASE]);
    for (int f = 0; f < N_REQUEST_LABELS; f++)
        if (tally_request_labels[f].flags & FLD_ROLLUP) bind_sv(st, i++, k->s[RK_LABEL(tally_request_labels[f].slot)]);
    bind_i64(st, i++, k->ok >= 0, k->ok);
    bind_sv(st, i++, k->s[RK_DEGRADED]);
    sqlite3_bind_int64(st, i++, (int64_t)c->events);
    sqlite3_bind_blob(st, i, s->cellbuf.p, (int)s->cellbuf.len, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int write_cells(store *s)
{
    int rc = rollup_each(s->cells, upsert_cell, s);
    rollup_clear(s->cells);
    return rc ? -1 : 0;
}

int store_add_cells(store *s, rollup *cells)
{
    return rollup_each(cells, upsert_cell, s) ? -1 : 0;
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
        char sql[sizeof sql_insert_head + INSERT_MANY * (sizeof sql_insert_row + 1)];
        size_t n = strlen(sql_insert_head), rl = strlen(sql_insert_row);
        memcpy(sql, sql_insert_head, n);
        for (int i = 0; i < INSERT_MANY; i++) {
            if (i) sql[n++] = ',';
            memcpy(sql + n, sql_insert_row, rl);
            n += rl;
        }
        sql[n] = 0;
        if (prepare(s->db, sql, &s->ins_many)) return -1;
    }
    return prepare(s->db, sql_insert, &s->ins) || prepare(s->db, near_sql, &s->near) ||
           prepare(s->db, sql_upsert, &s->upsert) || prepare(s->db, run_start_sql, &s->run_start) ||
           prepare(s->db, run_end_sql, &s->run_end);
}

static void finalize_all(store *s)
{
    sqlite3_stmt **sts[] = {&s->ins, &s->ins_many, &s->near, &s->upsert, &s->run_start, &s->run_end};
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
        exec(db, sql_events) || exec(db, sql_rollup) || prepare_all(s))
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
    if (failed || rc != SQLITE_DONE || write_cells(s) || exec(db, "DROP TABLE events_v1")) return -1;
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
        if (exec(db, sql_events) || exec(db, sql_rollup) || exec(db, RUNS_V1)) goto fail;
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

/* ---- the checkpointer ------------------------------------------------------- */

static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    ckpt *c = arg;
    pthread_mutex_lock(&c->mu);
    c->frames = frames;
    if (frames >= CK_START_FRAMES) pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return SQLITE_OK;
}

static void *ckpt_main(void *arg)
{
    ckpt *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->stop && !c->want_all && c->frames < CK_START_FRAMES) pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop) break;
        c->frames = 0;
        pthread_mutex_unlock(&c->mu);
        int log = -1, copied = -1;
        int rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
        pthread_mutex_lock(&c->mu);
        c->passes++;
        c->all_copied = rc == SQLITE_OK && log >= 0 && copied == log;
        if (c->all_copied) c->want_all = 0;
        pthread_cond_broadcast(&c->done_cv);
        if (c->want_all && rc != SQLITE_OK) {
            /* Busy (a reader holds old frames): try again a little later. */
            pthread_mutex_unlock(&c->mu);
            sqlite3_sleep(5);
            pthread_mutex_lock(&c->mu);
        }
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static ckpt *ckpt_start(store *s, const char *path)
{
    ckpt *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK ||
        exec(c->db, "PRAGMA journal_mode=WAL")) {
        sqlite3_close(c->db);
        free(c);
        return NULL;
    }
    sqlite3_busy_timeout(c->db, 100);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    pthread_cond_init(&c->done_cv, NULL);
    if (pthread_create(&c->th, NULL, ckpt_main, c) != 0) {
        sqlite3_close(c->db);
        free(c);
        return NULL;
    }
    pthread_setname_np(c->th, "tally-ckpt");
    sqlite3_wal_hook(s->db, wal_hook, c);
    return c;
}

static void ckpt_stop(store *s)
{
    ckpt *c = s->ck;
    if (!c) return;
    sqlite3_wal_hook(s->db, NULL, NULL);
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->th, NULL);
    sqlite3_close(c->db);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    pthread_cond_destroy(&c->done_cv);
    free(c);
    s->ck = NULL;
}

/* After a commit: when the log has outgrown CK_MAX_FRAMES, wait (boundedly)
 * until the checkpointer has copied all of it, so that the next
 * transaction starts the log again from its beginning. */
static void ckpt_bound(store *s)
{
    ckpt *c = s->ck;
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    if (c->frames >= CK_MAX_FRAMES) {
        c->want_all = 1;
        c->all_copied = 0;
        pthread_cond_signal(&c->cv);
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += CK_WAIT_MS / 1000;
        while (c->want_all && !c->all_copied)
            if (pthread_cond_timedwait(&c->done_cv, &c->mu, &dl) != 0) break;
        c->want_all = 0;
    }
    pthread_mutex_unlock(&c->mu);
}

/* ---- open / close --------------------------------------------------------------- */

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

store *store_open(const char *path, int flags, char *err, size_t errlen)
{
    sql_init();
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
    sqlite3_create_function_v2(db, "tally_cell_merge", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL, cell_merge_fn,
                               NULL, NULL, NULL);
    /* Two processes opening a new database at once: one of them can get
     * SQLITE_BUSY at once (SQLite's deadlock avoidance ignores the busy
     * timeout there), so the setup is retried, boundedly. */
    int failed = 1;
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA page_size=%d", PAGE_SIZE);
    for (int tries = 0; tries < 100 && failed; tries++) {
        failed = (fresh && exec(db, sql)) || exec(db, "PRAGMA journal_mode=WAL") ||
                 exec(db, "PRAGMA synchronous=NORMAL") || (ver < STORE_VERSION && migrate(s, ver)) || prepare_all(s);
        if (failed && sqlite3_errcode(db) != SQLITE_BUSY && sqlite3_errcode(db) != SQLITE_LOCKED) break;
        if (failed) sqlite3_sleep(10);
    }
    if (failed) {
        set_err(err, errlen, "cannot set up %s: %s", path, sqlite3_errmsg(db));
        store_close(s);
        return NULL;
    }
    if (flags & STORE_CHECKPOINTER) s->ck = ckpt_start(s, path); /* without one, SQLite checkpoints itself */
    return s;
}

void store_close(store *s)
{
    if (!s) return;
    if (s->in_txn) store_rollback(s);
    ckpt_stop(s);
    finalize_all(s);
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

/* ---- transactions ------------------------------------------------------------- */

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
    if (write_cells(s) || exec(s->db, "COMMIT")) {
        store_rollback(s);
        return -1;
    }
    s->in_txn = 0;
    ckpt_bound(s);
    return 0;
}

void store_rollback(store *s)
{
    /* After a failed COMMIT (disk full, file size limit) SQLite has often
     * rolled back already; a second ROLLBACK would replace the real cause
     * in sqlite3_errmsg() with "no transaction is active". */
    if (s->in_txn && !sqlite3_get_autocommit(s->db)) exec(s->db, "ROLLBACK");
    s->in_txn = 0;
    rollup_clear(s->cells);
    s->have_last = 0; /* the slots it took are free again */
}

static int64_t next_slot(store *s, int64_t base);

int store_insert(store *s, const row *r, int flags)
{
    int dedup = flags & STORE_DEDUP;
    int64_t base = store_seq_base(r), seq;
    if (dedup) {
        int f = find_slot(s, base, r->id, &seq);
        if (f != 0) return f > 0 ? 0 : -1;
    } else {
        /* Events come in time order: the slot after this writer's last one
         * is free unless another writer took it (then the insert fails and
         * the run is read for the next free slot). */
        seq = next_slot(s, base);
    }
    sqlite3_stmt *st = s->ins;
    sqlite3_clear_bindings(st);
    bind_row(st, 1, seq, r);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_CONSTRAINT && !dedup) {
        if (find_slot(s, base, (sv){NULL, 0}, &seq) < 0) return -1;
        sqlite3_bind_int64(st, 1, seq);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
    }
    if (rc != SQLITE_DONE) return -1;
    s->last_seq = seq;
    s->last_base = base;
    s->have_last = 1;
    if (flags & STORE_COUNTED) return 1;
    int full = rollup_add(s->cells, r);
    if (full < 0) return -1;
    if (full > 0 && write_cells(s)) return -1;
    return 1;
}

/* The slot to try first: after this connection's last event when that was
 * of the same microsecond (the slots from base to it are all taken), else
 * the microsecond's first. */
static int64_t next_slot(store *s, int64_t base)
{
    return s->have_last && s->last_base == base ? s->last_seq + 1 : base;
}

int store_insert_rows(store *s, const row *rows, size_t n, int flags)
{
    size_t i = 0;
    while (n - i >= INSERT_MANY) {
        sqlite3_stmt *st = s->ins_many;
        sqlite3_clear_bindings(st);
        int64_t seq[INSERT_MANY], base[INSERT_MANY];
        for (int k = 0; k < INSERT_MANY; k++) {
            base[k] = store_seq_base(&rows[i + (size_t)k]);
            seq[k] = next_slot(s, base[k]);
            s->last_seq = seq[k];
            s->last_base = base[k];
            s->have_last = 1;
            bind_row(st, 1 + k * INSERT_COLS, seq[k], &rows[i + (size_t)k]);
        }
        int rc = sqlite3_step(st);
        int done = sqlite3_changes(s->db);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) {
            /* Row `done` took a slot another writer had: the rows before it
             * are in; it goes in one by one, and the rest after it. */
            if (rc != SQLITE_CONSTRAINT || done < 0 || done >= INSERT_MANY) return -1;
            s->last_seq = done ? seq[done - 1] : 0;
            s->last_base = done ? base[done - 1] : 0;
            s->have_last = done > 0;
            for (int k = 0; k < done; k++)
                if (!(flags & STORE_COUNTED) && rollup_add(s->cells, &rows[i + (size_t)k]) < 0) return -1;
            i += (size_t)done;
            if (store_insert(s, &rows[i], flags & STORE_COUNTED) < 0) return -1;
            i++;
            continue;
        }
        for (int k = 0; k < INSERT_MANY && !(flags & STORE_COUNTED); k++)
            if (rollup_add(s->cells, &rows[i + (size_t)k]) < 0) return -1;
        i += INSERT_MANY;
    }
    for (; i < n; i++)
        if (store_insert(s, &rows[i], flags & STORE_COUNTED) < 0) return -1;
    if (!(flags & STORE_COUNTED) && rollup_cells(s->cells) >= ROLLUP_MAX_CELLS && write_cells(s)) return -1;
    return 0;
}

/* ---- runs -------------------------------------------------------------------------- */

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
    else sqlite3_bind_double(st, i, jv_num(v, 0));
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

/* ---- reading ----------------------------------------------------------------------- */

static sv col_sv(sqlite3_stmt *st, int i)
{
    const char *p = (const char *)sqlite3_column_text(st, i);
    return p ? (sv){p, (size_t)sqlite3_column_bytes(st, i)} : (sv){NULL, 0};
}

static int col_dbl(sqlite3_stmt *st, int i, double *out)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL) return 0;
    *out = sqlite3_column_double(st, i);
    return 1;
}

static int col_i64(sqlite3_stmt *st, int i, int64_t *out)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL) return 0;
    *out = sqlite3_column_int64(st, i);
    return 1;
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
    if (col_i64(st, i++, &ok)) {
        r->ok = ok != 0;
        r->has |= ROW_OK;
    }
    r->error = col_sv(st, i++);
    r->degraded = col_sv(st, i++);
    if (col_i64(st, i++, &r->prompt)) r->has |= ROW_PROMPT;
    if (col_i64(st, i++, &r->cached)) r->has |= ROW_CACHED;
    if (col_i64(st, i++, &r->cache_write)) r->has |= ROW_CACHE_WRITE;
    if (col_i64(st, i++, &r->completion)) r->has |= ROW_COMPLETION;
    if (col_i64(st, i++, &r->reasoning)) r->has |= ROW_REASONING;
    if (col_dbl(st, i++, &r->latency_us)) r->has |= ROW_LATENCY;
    if (col_dbl(st, i++, &r->ttft_us)) r->has |= ROW_TTFT;
    if (col_i64(st, i++, &r->cost_nusd)) r->has |= ROW_COST;
    if (col_dbl(st, i++, &r->energy_j)) r->has |= ROW_ENERGY;
    if (col_dbl(st, i++, &r->gpu_util)) r->has |= ROW_GPU;
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

/* ---- retention --------------------------------------------------------------------- */

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
    if (full < 0 || (full > 0 && write_cells(b->s))) {
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
    return b.failed || write_cells(s) ? -1 : 0;
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
    int64_t total = write_cells(s) ? -1 : 0, n;
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
