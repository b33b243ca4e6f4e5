/*
 * rollup -- per-minute cells of the events a transaction adds.
 *
 * The database keeps, beside its rows, one aggregate cell (agg.h) per
 * minute and key: run, kind, phase, ok, degraded, and the request fields
 * marked FLD_ROLLUP in fields.h (model, engine, provider, finish_reason,
 * route).
 * Writers add each row they insert to a rollup in memory and upsert its
 * cells in the same transaction (store.c), so the cells always describe
 * exactly the committed rows; `tally stats` answers from them when its
 * question only involves those keys.  Keys with many values (principal,
 * error text, request id) stay out: they would make the cells as many as
 * the rows.
 *
 * Memory is bounded: a rollup holds at most `max_cells` cells, and says
 * when it is full so that its owner writes them out early.
 */
#ifndef TALLY_ROLLUP_H
#define TALLY_ROLLUP_H

#include <stddef.h>
#include <stdint.h>

#include "agg.h"
#include "record.h"
#include "row.h"

/* The key's string fields: run, kind, phase, degraded, then one place per
 * named request field (fields.h; absent unless it is FLD_ROLLUP).
 *
 * Encoded as schema v2 wrote keys -- run, kind, phase, model, engine,
 * route, degraded, ok, what the rows count as -- then, only when one of
 * them is present, the FLD_ROLLUP fields added since (provider,
 * finish_reason, ...) in fields.h's order.  So a v2 database's keys read
 * as they are, and a row without the newer fields has the key it had. */
enum { RK_RUN, RK_KIND, RK_PHASE, RK_DEGRADED, RK_LABEL0 };
#define RK_NSTR (RK_LABEL0 + RQ_NLABELS)
#define RK_LABEL(slot) (RK_LABEL0 + (slot))

typedef struct rollup_key {
    int64_t minute;            /* -1: events with no time */
    sv s[RK_NSTR];             /* NULL = absent */
    int ok;                    /* -1 absent, 0 false, 1 true */
    int agg;                   /* agg_kind() of its rows: AGG_REQUEST, ... */
    const void *bytes;         /* the whole key, encoded (the `key` column) */
    size_t len;
} rollup_key;

/* The minute of a time: m with 60m <= ts < 60(m+1), by the same
 * comparisons a reader makes; -1 without a time. */
int64_t rollup_minute(const row *r);

/* The row a key stands for (its minute's start as the time). */
void rollup_key_row(const rollup_key *k, row *r);

/* Encodes r's key (minute apart) into b. */
void rollup_key_encode(const row *r, buf *b);
/* Reads an encoded key back into k (strings point into p).  0 or -1. */
int rollup_key_decode(const void *p, size_t n, int64_t minute, rollup_key *k);

typedef struct rollup rollup;

rollup *rollup_new(size_t max_cells);
void rollup_free(rollup *r);
/* Adds a row to its minute's cell.  Returns 1 when the rollup is now
 * full, 0, or -1 when memory ran out. */
int rollup_add(rollup *r, const row *w);
size_t rollup_cells(const rollup *r);
/* Calls fn for every cell; stops at the first non-zero return. */
int rollup_each(rollup *r, int (*fn)(void *ud, const rollup_key *k, const agg_cell *c), void *ud);
/* Empties the rollup (keeping its memory for the next transaction). */
void rollup_clear(rollup *r);

#endif
