/* fields -- the table of fields.h, built from its list. */
#include "fields.h"

#include <pthread.h>
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

#define ROW_TYPE(m) _Generic(((row *)0)->m, double: FLD_F64, default: FLD_I64)
const number_def tally_request_numbers[] = {
#define X(key, api, rec, type, present, rowm, rowbit, flags)                                                       \
    {#key, sizeof #key - 1, type, offsetof(tally_request, api), offsetof(row, rowm), ROW_TYPE(rowm), rowbit, flags},
    TALLY_REQUEST_NUMBERS(X)
#undef X
};

/* Fields by key length: candidates[len] lists indexes, -1 ends. */
#define KEY_MAX 32
static signed char by_len[KEY_MAX + 1][8];
static pthread_once_t by_len_once = PTHREAD_ONCE_INIT;

static void add_len(size_t n, int idx)
{
    if (n > KEY_MAX) return;
    for (int i = 0; i < 7; i++)
        if (by_len[n][i] < 0) {
            by_len[n][i] = (signed char)idx;
            return;
        }
}

static void build_by_len(void)
{
    memset(by_len, -1, sizeof by_len);
    for (int i = 0; i < N_REQUEST_LABELS; i++) add_len(tally_request_labels[i].keylen, i);
    for (int i = 0; i < N_REQUEST_NUMBERS; i++) add_len(tally_request_numbers[i].keylen, N_REQUEST_LABELS + i);
}

int request_key_index(const char *k, size_t n)
{
    if (n > KEY_MAX) return -1;
    pthread_once(&by_len_once, build_by_len);
    for (int i = 0; i < 8 && by_len[n][i] >= 0; i++) {
        int idx = by_len[n][i];
        const char *key = idx < N_REQUEST_LABELS ? tally_request_labels[idx].key
                                                 : tally_request_numbers[idx - N_REQUEST_LABELS].key;
        if (memcmp(key, k, n) == 0) return idx;
    }
    return -1;
}

