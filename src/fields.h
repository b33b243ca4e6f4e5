/*
 * fields -- THE definition of a request's named string fields.
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

/* The field whose key is k[0..n), or NULL. */
const field_def *field_by_key(const char *k, size_t n);

/* The row member a field fills. */
#define FIELD_SV(row_ptr, f) ((sv *)((char *)(row_ptr) + (f)->row_off))
#define FIELD_CSV(row_ptr, f) ((const sv *)((const char *)(row_ptr) + (f)->row_off))

#endif
