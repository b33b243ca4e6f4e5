/* fields -- the table of fields.h, built from its list. */
#include "fields.h"

#include <string.h>

#include "record.h"
#include "row.h"
#include "tally.h"

const field_def tally_request_labels[] = {
#define X(SLOT, name, flags) \
    {#name, sizeof #name - 1, RQ_##SLOT, offsetof(tally_request, name), offsetof(row, name), (flags)},
    TALLY_REQUEST_LABELS(X)
#undef X
};

const field_def *field_by_key(const char *k, size_t n)
{
    for (int i = 0; i < N_REQUEST_LABELS; i++)
        if (tally_request_labels[i].keylen == n && memcmp(tally_request_labels[i].key, k, n) == 0)
            return &tally_request_labels[i];
    return NULL;
}
