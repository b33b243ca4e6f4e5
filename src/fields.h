/*
 * fields -- THE definition of a request's fields: its named strings
 * (TALLY_REQUEST_LABELS) and its numbers (TALLY_REQUEST_NUMBERS, below).
 *
 * Each line of TALLY_REQUEST_LABELS names one field once: that name is the
 * member of tally_request (include/tally.h), its string slot in the ring
 * record (record.h: RQ_<SLOT>), its key in the request's `extra` object,
 * its member of `row` (row.h), its column in the events table (store.c)
 * and its --by / --where key in `tally stats`.  Its flags say what else it
 * is:
 *
 *   FLD_REQUIRED   a request without it is reported by `tally validate`
 *   FLD_ROLLUP     a key of the database's per-minute rollup (rollup.h):
 *                  for fields with few values (a model, not a request id)
 *   FLD_TAIL       shown by `tally tail`
 *
 * Driven by this list: the recording call's copy, the JSON encoder, both
 * row decoders (from a record, from JSON), the events table's CREATE /
 * INSERT / SELECT and binds, the rollup key, `validate`'s type checks,
 * `tail`'s line and the stats keys.  Adding a field is one line here and
 * one member in tally.h -- and its tests (docs/internals.md).
 *
 * The request's other strings have rules of their own (an error makes the
 * request fail, `degraded` is counted by reason, `sampling` and `extra`
 * are the caller's JSON, `text` is kept only with capture on) and are
 * listed in record.h after these.
 */
#ifndef TALLY_FIELDS_H
#define TALLY_FIELDS_H

#include <stddef.h>

enum { FLD_REQUIRED = 1, FLD_ROLLUP = 2, FLD_TAIL = 4 };

/* X(SLOT, name, flags) -- the order is the order in the JSON line. */
#define TALLY_REQUEST_LABELS(X)                               \
    X(MODEL, model, FLD_REQUIRED | FLD_ROLLUP | FLD_TAIL)     \
    X(ENGINE, engine, FLD_ROLLUP | FLD_TAIL)                  \
    X(PROVIDER, provider, FLD_ROLLUP | FLD_TAIL)              \
    X(FINISH_REASON, finish_reason, FLD_ROLLUP | FLD_TAIL)    \
    X(ROUTE, route, FLD_ROLLUP | FLD_TAIL)                    \
    X(REQUEST_ID, request_id, FLD_TAIL)                       \
    X(PRINCIPAL_ID, principal_id, 0)                          \
    X(PROVIDER_REQUEST_ID, provider_request_id, 0)            \
    X(PROMPT_VERSION, prompt_version, 0)

/* A request's numbers, the same way: X(key, api, rec, type, present, row,
 * rowbit, flags) -- `key` in `extra` and the column name, `api` the
 * tally_request member, `rec` the record's, `type` FLD_I64 or FLD_F64 (of
 * api and rec), `present` when it is written (FLD_ALWAYS, FLD_POSITIVE,
 * or a TALLY_HAS_* bit of the request's flags), `row` / `rowbit` its row
 * member and presence bit.  The record's copy, the encoder, both row
 * decoders, the columns and binds and validate's checks come from it.
 * (The cost breakdown and stage times ride along with cost_nusd and on
 * their own.)  Order: the order in the line. */
enum { FLD_I64 = 1, FLD_F64 = 2 };
#define FLD_ALWAYS 0x10000u
#define FLD_POSITIVE 0x20000u
#define TALLY_REQUEST_NUMBERS(X)                                                                                  \
    X(prompt_tokens, prompt_tokens, prompt, FLD_I64, FLD_ALWAYS, prompt, ROW_PROMPT, FLD_REQUIRED)             \
    X(completion_tokens, completion_tokens, completion, FLD_I64, FLD_ALWAYS, completion, ROW_COMPLETION,        \
      FLD_REQUIRED)                                                                                            \
    X(latency_us, latency_us, latency_us, FLD_I64, FLD_ALWAYS, latency_us, ROW_LATENCY, FLD_REQUIRED)          \
    X(cached_tokens, cached_tokens, cached, FLD_I64, FLD_POSITIVE, cached, ROW_CACHED, 0)                      \
    X(cache_write_tokens, cache_write_tokens, cache_write, FLD_I64, FLD_POSITIVE, cache_write, ROW_CACHE_WRITE, \
      0)                                                                                                       \
    X(reasoning_tokens, reasoning_tokens, reasoning, FLD_I64, FLD_POSITIVE, reasoning, ROW_REASONING, 0)       \
    X(ttft_us, ttft_us, ttft_us, FLD_I64, FLD_POSITIVE, ttft_us, ROW_TTFT, 0)                                  \
    X(cost_nusd, cost_nusd, cost, FLD_I64, TALLY_HAS_COST, cost_nusd, ROW_COST, 0)                             \
    X(energy_j, energy_j, energy_j, FLD_F64, TALLY_HAS_ENERGY, energy_j, ROW_ENERGY, 0)                         \
    X(gpu_util_pct, gpu_util_pct, gpu_util, FLD_F64, TALLY_HAS_GPU_UTIL, gpu_util, ROW_GPU, 0)

typedef struct number_def {
    const char *key;
    size_t keylen;
    int type;               /* FLD_I64 / FLD_F64: in the API and the record */
    size_t api_off, row_off;
    int row_type;           /* FLD_I64 / FLD_F64: the row member */
    unsigned rowbit, flags;
} number_def;

extern const number_def tally_request_numbers[];
#define FLD_COUNTN_(key, api, rec, type, present, rowm, rowbit, flags) +1
#define N_REQUEST_NUMBERS (0 TALLY_REQUEST_NUMBERS(FLD_COUNTN_))

typedef struct field_def {
    const char *key;        /* JSON key, column, stats key */
    size_t keylen;
    int slot;               /* RQ_* */
    size_t api_off;         /* offsetof(tally_request, name) */
    size_t row_off;         /* offsetof(row, name) */
    unsigned flags;
} field_def;

extern const field_def tally_request_labels[];
#define FLD_COUNT_(SLOT, name, flags) +1
#define N_REQUEST_LABELS (0 TALLY_REQUEST_LABELS(FLD_COUNT_))


/* The row member a field fills. */
#define FIELD_SV(row_ptr, f) ((sv *)((char *)(row_ptr) + (f)->row_off))
#define FIELD_CSV(row_ptr, f) ((const sv *)((const char *)(row_ptr) + (f)->row_off))

#endif
