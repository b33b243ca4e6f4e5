/*
 * agg -- what tally counts for a group of events: the one definition.
 *
 * A cell holds the sums, counts and sketches of the rows added to it.
 * `tally stats` keeps one cell per group; the database keeps one per
 * minute and key (the rollup, see store.c) so that a question over
 * millions of rows is answered from a few thousand cells.  Both fill cells
 * with agg_cell_add() and combine them with agg_cell_merge(), and merging
 * is exact for every count, sum of integers and sketch, so a figure does
 * not depend on which way it was computed.  (Sums of fractional values --
 * energy, utilisation, throughput -- may differ in the last digits, since
 * floating-point addition depends on order.)
 *
 * Definitions of every figure: docs/stats.md.
 */
#ifndef TALLY_AGG_H
#define TALLY_AGG_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "row.h"
#include "sketch.h"

#define AGG_MAX_DEGRADED 16

/* What a row counts as. */
enum { AGG_NONE, AGG_REQUEST, AGG_STEP, AGG_EPOCH, AGG_ERROR, AGG_EVAL, AGG_LAST = AGG_EVAL };

/* A loss over events: of the earliest and the latest by time (events
 * without a time: in the order added), and the lowest. */
typedef struct agg_loss {
    double first, first_ts, last, last_ts, min;
} agg_loss;

typedef struct agg_cell {
    uint64_t events;               /* rows added, whatever they count as */
    /* requests */
    uint64_t requests, failed;
    int64_t prompt, cached, cache_write, completion, reasoning, total_tokens;
    uint64_t cost_n, unpriced;
    int64_t cost_nusd;             /* tally's costs (exact) */
    double cost_usd;               /* other producers' costs, in USD */
    double latency_sum_us, ttft_sum_us, tput_sum, energy_j, energy_completion, gpu_sum;
    uint64_t latency_n, ttft_n, tput_n, energy_n, gpu_n;
    sketch latency, ttft, tpot, step_time;
    char *degraded[AGG_MAX_DEGRADED];
    uint64_t degraded_n[AGG_MAX_DEGRADED], degraded_other;
    /* training */
    uint64_t steps, epochs, error_events;
    uint64_t loss_nonfinite;       /* steps whose loss was NaN or infinite */
    int has_loss;
    agg_loss loss;
    double step_wall_us;
    int64_t step_tokens;
    uint64_t step_tokens_n;
    /* evaluations (not requests) with a loss: first and last by time, best */
    uint64_t evals;
    agg_loss eval;                 /* min: the best */
} agg_cell;

void agg_cell_init(agg_cell *c);
void agg_cell_free(agg_cell *c);
/* Empties c, keeping its sketches' memory for reuse. */
void agg_cell_reset(agg_cell *c);

/* AGG_REQUEST, AGG_STEP, AGG_EPOCH, AGG_ERROR, AGG_EVAL (an evaluation
 * with a loss), or AGG_NONE for rows that stats does not count (run_start,
 * notes, ...). */
int agg_kind(const row *r);

/* Adds one row: every row counts in `events`, the rest by its kind.  -1
 * when memory ran out. */
int agg_cell_add(agg_cell *c, const row *r);
int agg_cell_merge(agg_cell *into, const agg_cell *from);
/* `count` requests degraded for one reason (for cells built from counts). */
int agg_cell_add_reason(agg_cell *c, const char *p, size_t n, uint64_t count);
/* The same without the ttft, tpot and step-time sketches (their counts and
 * sums still merge): for aggregates that only draw latency over time. */
int agg_cell_merge_lean(agg_cell *into, const agg_cell *from);

/* The cell as bytes (the rollup's `cell` column), and back: decoding
 * merges into c and returns 0, or -1 (c unchanged) for bytes that are not
 * a cell of this version. */
void agg_cell_encode(const agg_cell *c, buf *b);
int agg_cell_decode_merge(agg_cell *c, const void *p, size_t n);

/* Cost in USD of the cell's priced requests. */
static inline double agg_cost_usd(const agg_cell *c) { return (double)c->cost_nusd / 1e9 + c->cost_usd; }

#endif
