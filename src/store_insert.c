/*
 * store_insert -- where an event goes, inserts, the rollup's cells, the runs table (see store_int.h, store.c)
 */
#include "store_int.h"

#include <stdlib.h>

#include "hash.h"


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
/* 1 when the row at seq has this id. */
static int id_at(store *s, int64_t seq, sv id)
{
    sqlite3_stmt *st = s->at;
    sqlite3_bind_int64(st, 1, seq);
    int same = sqlite3_step(st) == SQLITE_ROW && (size_t)sqlite3_column_bytes(st, 0) == id.n &&
               memcmp(sqlite3_column_text(st, 0), id.p, id.n) == 0;
    sqlite3_reset(st);
    return same;
}

static int find_slot(store *s, int64_t base, sv id, int64_t *slot)
{
    /* Importing again what is stored: the next event is most often in the
     * slot after the last one found (one look, not a search of a burst of
     * events that share a microsecond). */
    if (id.p && s->have_found && base >= s->found_base && base <= s->found_seq + 1 && id_at(s, s->found_seq + 1, id)) {
        s->found_seq++;
        return 1;
    }
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
            s->found_seq = seq;
            s->found_base = base;
            s->have_found = 1;
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
    for (int k = 0; k < N_REQUEST_NUMBERS; k++) {
        const number_def *f = &tally_request_numbers[k];
        const void *m = (const char *)r + f->row_off;
        int present = (h & f->rowbit) != 0;
        if (f->row_type == FLD_I64) put_i64(st, i++, present, *(const int64_t *)m);
        else if (f->type == FLD_I64) put_num(st, i++, present, *(const double *)m); /* whole microseconds */
        else put_dbl(st, i++, present, *(const double *)m);
    }
    put_i64(st, i++, h & ROW_OK, r->ok);
    put_sv(st, i++, r->error);
    put_sv(st, i++, r->degraded);
    put_i64(st, i++, h & ROW_STEP, r->step);
    put_dbl(st, i++, h & ROW_LOSS, r->loss);
    put_num(st, i++, h & ROW_WALL, r->wall_us);
    put_i64(st, i++, h & ROW_STEP_TOKENS, r->step_tokens);
    put_sv(st, i++, r->text);
    put_sv(st, i++, r->json.p ? r->json : SV_LIT("{}"));
}

/* tally_cell_merge(a, b): the rollup's upsert adds a transaction's cell to
 * the stored one. */
void store_cell_merge_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
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
    /* The order of store_sql_upsert: minute, key, run, kind, phase, the rollup's
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

int store_write_cells(store *s)
{
    int rc = rollup_each(s->cells, upsert_cell, s);
    rollup_clear(s->cells);
    return rc ? -1 : 0;
}

int store_add_cells(store *s, rollup *cells)
{
    return rollup_each(cells, upsert_cell, s) ? -1 : 0;
}

static int64_t next_slot(store *s, int64_t base);

/* This connection took slot seq (of time base). */
static void took(store *s, int64_t seq, int64_t base)
{
    s->last_seq = seq;
    s->last_base = base;
    s->have_last = 1;
    if (seq > s->txn_max) s->txn_max = seq;
}

/* The first slot past every stored row, for STORE_DEDUP's fresh rows:
 * asked once per transaction, by its first STORE_DEDUP insert (the
 * sink's transactions never ask).  The ids' set gets its whole room at
 * once: it never grows, so it cannot fail to take an id. */
static void fresh_begin(store *s)
{
    sqlite3_stmt *st = NULL;
    s->fresh_ok = 0;
    if (sqlite3_prepare_v2(s->db, "SELECT max(seq) FROM events", -1, &st, NULL) != SQLITE_OK) return;
    if (sqlite3_step(st) == SQLITE_ROW) {
        s->fresh_from = sqlite3_column_type(st, 0) == SQLITE_NULL ? INT64_MIN : sqlite3_column_int64(st, 0) + 1;
        s->fresh_ok = s->fresh_from != INT64_MAX;
        s->txn_max = s->fresh_from == INT64_MIN ? INT64_MIN : s->fresh_from - 1;
        idset_init(&s->fresh_ids);
        if (s->fresh_ok && idset_reserve(&s->fresh_ids, FRESH_MAX)) {
            idset_free(&s->fresh_ids);
            s->fresh_ok = 0;
        }
    }
    sqlite3_finalize(st);
}

/* The transaction's set of ids is full (the next fresh row forgets them). */
static int fresh_full(const store *s) { return s->fresh_ok && s->fresh_ids.n >= FRESH_MAX; }

/* For STORE_DEDUP in a transaction: 1 when r is new without a search --
 * past every row stored before the transaction, and its id not among the
 * transaction's own (whose hashes are kept).  0: it is searched for (the
 * same event again, or another whose id has the same hash).  When the
 * set is full, the rows so far count as stored before; every row this
 * transaction took must be in the table by then (took()). */
static int fresh_new(store *s, const row *r, int64_t base)
{
    if (!s->fresh_tried) {
        s->fresh_tried = 1;
        fresh_begin(s);
    }
    if (!s->fresh_ok || base < s->fresh_from || !r->id.p) return 0;
    int search = 0;
    if (fresh_full(s)) {
        idset_clear(&s->fresh_ids);
        s->fresh_from = s->txn_max + 1;
        if (base < s->fresh_from) return 0;
        search = 1; /* it may repeat a row of the forgotten ids; remembered from here */
    }
    return idset_add(&s->fresh_ids, r->id.p, r->id.n) == 1 && !search;
}

/* One row: searched for first (dedup: not stored again when there), or
 * into the slot after this writer's last.  1 stored, 0 there, -1 error. */
static int insert_one(store *s, const row *r, int64_t base, int dedup, int flags)
{
    int64_t seq;
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
    if (rc == SQLITE_CONSTRAINT && !dedup) { /* another writer's slot: the next free one */
        if (find_slot(s, base, (sv){NULL, 0}, &seq) < 0) return -1;
        sqlite3_bind_int64(st, 1, seq);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
    }
    if (rc != SQLITE_DONE) return -1;
    took(s, seq, base);
    if (flags & STORE_COUNTED) return 1;
    int full = rollup_add(s->cells, r);
    if (full < 0) return -1;
    if (full > 0 && store_write_cells(s)) return -1;
    return 1;
}

int store_insert(store *s, const row *r, int flags)
{
    int64_t base = store_seq_base(r);
    return insert_one(s, r, base, (flags & STORE_DEDUP) && !(s->in_txn && fresh_new(s, r, base)), flags);
}

/* The slot to try first: after this connection's last event when that was
 * of the same microsecond (the slots from base to it are all taken), else
 * the microsecond's first. */
static int64_t next_slot(store *s, int64_t base)
{
    /* After this writer's last row of the same time, or past the slots a
     * burst of its rows spilled into (more than STORE_SLOTS events in a
     * microsecond): without it, each row of a long burst would search
     * the whole burst for a free slot. */
    if (s->have_last && base >= s->last_base && base <= s->last_seq) return s->last_seq + 1;
    return base;
}

/* INSERT_MANY rows that need no search, in one statement.  0 or -1. */
static int insert_many(store *s, const row *rows, const int64_t *base, int flags)
{
    sqlite3_stmt *st = s->ins_many;
    sqlite3_clear_bindings(st);
    int64_t seq[INSERT_MANY];
    for (int k = 0; k < INSERT_MANY; k++) {
        seq[k] = next_slot(s, base[k]);
        took(s, seq[k], base[k]);
        bind_row(st, 1 + k * INSERT_COLS, seq[k], &rows[k]);
    }
    int rc = sqlite3_step(st);
    int done = rc == SQLITE_DONE ? INSERT_MANY : sqlite3_changes(s->db);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        /* Row `done` took a slot another writer had: the rows before it
         * are in, it and the ones after it go in one by one. */
        if (rc != SQLITE_CONSTRAINT || done < 0 || done >= INSERT_MANY) return -1;
        s->last_seq = done ? seq[done - 1] : 0;
        s->last_base = done ? base[done - 1] : 0;
        s->have_last = done > 0;
        for (int k = done; k < INSERT_MANY; k++)
            if (insert_one(s, &rows[k], base[k], 0, flags) < 0) return -1;
    }
    for (int k = 0; k < done && !(flags & STORE_COUNTED); k++)
        if (rollup_add(s->cells, &rows[k]) < 0) return -1;
    return 0;
}

/* The rows of a stretch shorter than INSERT_MANY, one by one: 0 or -1. */
static int insert_each(store *s, const row *rows, const int64_t *base, size_t k, int flags)
{
    for (size_t j = 0; j < k; j++)
        if (insert_one(s, &rows[j], base[j], 0, flags) < 0) return -1;
    return 0;
}

int store_insert_rows(store *s, const row *rows, size_t n, int flags, size_t *stored)
{
    /* Rows that need no search gather into a stretch (rows[from..from+k)),
     * inserted INSERT_MANY at a time; before a row that is searched for,
     * and at the end, the stretch's rest goes in one by one. */
    int64_t base[INSERT_MANY];
    size_t k = 0, from = 0, got = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t b = store_seq_base(&rows[i]);
        int dedup = flags & STORE_DEDUP;
        if (dedup && s->in_txn) {
            /* a full set of ids forgets them: the stretch goes in first */
            if (k && fresh_full(s)) {
                if (insert_each(s, rows + from, base, k, flags)) return -1;
                got += k;
                k = 0;
            }
            dedup = !fresh_new(s, &rows[i], b);
        }
        if (dedup) {
            if (insert_each(s, rows + from, base, k, flags)) return -1;
            got += k;
            k = 0;
            int one = insert_one(s, &rows[i], b, 1, flags);
            if (one < 0) return -1;
            got += (size_t)one;
            continue;
        }
        if (!k) from = i;
        base[k++] = b;
        if (k == INSERT_MANY) {
            if (insert_many(s, rows + from, base, flags)) return -1;
            got += k;
            k = 0;
        }
    }
    if (insert_each(s, rows + from, base, k, flags)) return -1;
    got += k;
    if (stored) *stored = got;
    if (!(flags & STORE_COUNTED) && rollup_cells(s->cells) >= ROLLUP_MAX_CELLS && store_write_cells(s)) return -1;
    return 0;
}

int store_run_line(store *s, sv run_id, int is_end, sv line)
{
    if (!run_id.p || !line.p) return 0;
    sqlite3_stmt *st = is_end ? s->run_end : s->run_start;
    bind_sv(st, 1, run_id);
    bind_sv(st, 2, line);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : -1;
}
