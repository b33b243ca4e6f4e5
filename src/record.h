/*
 * record -- the binary layout of events inside a ring.
 *
 * The recording call copies the caller's fields into one of these records
 * (numbers as they are, strings as bytes after the fixed part) and returns;
 * the writer thread turns records into JSON.  Keeping the JSON encoder off
 * the caller's thread is what makes a request cost tens of nanoseconds.
 *
 * A string is an (offset, length) pair relative to the start of the
 * payload; offset 0 means "absent" (the fixed part always starts there).
 */
#ifndef TALLY_RECORD_H
#define TALLY_RECORD_H

#include <stdint.h>

#include "fields.h"

enum {
    REC_PAD = 0,
    REC_REQUEST,
    REC_STEP,
    REC_EPOCH,
    REC_EVAL,
    REC_ERROR,
    REC_NOTE,
    REC_EVENT,
};

typedef struct rstr {
    uint32_t off, len;
} rstr;

/* String slots of a request, in this order (bit i of `truncated`): the
 * named fields of fields.h, then the strings with rules of their own. */
enum {
#define X(SLOT, name, flags) RQ_##SLOT,
    TALLY_REQUEST_LABELS(X)
#undef X
    RQ_NLABELS,
    RQ_ERROR = RQ_NLABELS, RQ_DEGRADED, RQ_SAMPLING, RQ_TEXT, RQ_EXTRA, RQ_NSTR
};

typedef struct rec_stage {
    rstr name;
    int64_t us;
} rec_stage;

typedef struct rec_request {
    int64_t prompt, completion, latency_us, cached, cache_write, reasoning, ttft_us;
    int64_t cost, cost_input, cost_cached, cost_cache_write, cost_output, cost_reasoning;
    double energy_j, gpu_util;
    uint32_t flags, n_stages, truncated;
    int32_t device;
    int64_t begin_ns, end_ns;          /* energy span (0: none) */
    rstr s[RQ_NSTR];
    /* followed by n_stages rec_stage, then string bytes */
} rec_request;

typedef struct rec_step {
    int64_t step, tokens, wall_us;     /* wall_us < 0: not known */
    double loss, lr, grad_norm;
    uint32_t unfinished, truncated;
    uint32_t present, pad_;            /* TALLY_HAS_LOSS, ... */
    rstr metrics;
} rec_step;

typedef struct rec_epoch {
    int64_t epoch, wall_us;            /* wall_us < 0: not known */
    uint32_t unfinished, truncated;
    rstr metrics;
} rec_epoch;

typedef struct rec_eval {
    double loss, ppl;
    int64_t samples;
    uint32_t truncated, pad_;
    rstr name, extra;
} rec_eval;

typedef struct rec_error {
    int64_t step;
    uint32_t truncated, pad_;
    rstr type, message, phase, request_id;
} rec_error;

typedef struct rec_note {
    uint32_t truncated, pad_;
    rstr text;
} rec_note;

typedef struct rec_field {
    rstr key, s;
    int32_t type, pad_;
    int64_t i;
    double d;
} rec_field;

typedef struct rec_event {
    uint32_t n_fields, truncated;
    rstr kind;
    /* followed by n_fields rec_field, then string bytes */
} rec_event;

#endif
