/* fields -- the table of fields.h, built from its list. */
#include "fields.h"

#include <stddef.h>

#include "record.h"
#include "row.h"
#include "tally.h"

const field_def tally_request_labels[] = {
#define X(SLOT, name, flags) \
    {#name, sizeof #name - 1, RQ_##SLOT, offsetof(tally_request, name), offsetof(row, name), (flags)},
    TALLY_REQUEST_LABELS(X)
#undef X
};

#define ROW_TYPE(m) _Generic(((row *)0)->m, double: FLD_F64, default: FLD_I64)
const number_def tally_request_numbers[] = {
#define X(key, api, rec, type, present, rowm, rowbit, flags)                                                       \
    {#key, sizeof #key - 1, type, offsetof(tally_request, api), offsetof(row, rowm), ROW_TYPE(rowm), rowbit, flags},
    TALLY_REQUEST_NUMBERS(X)
#undef X
};
