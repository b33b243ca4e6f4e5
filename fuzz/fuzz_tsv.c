/*
 * fuzz_tsv -- libFuzzer target for ClickHouse's TabSeparated as tally
 * writes it (rows it inserts) and reads it (answers to `tally stats`).
 * The input is cut into values at each 0xff byte; they are written as one
 * line with ch_tsv_str and split again with ch_tsv_split.
 *
 * Properties checked on every input:
 *   - nothing crashes or reads outside the input (ASan);
 *   - the line holds no raw tab inside a value and no newline at all;
 *   - splitting gives back exactly the values written, byte for byte;
 *   - splitting the raw input as if it were an answer stays in bounds and
 *     never yields a field longer than the input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "clickhouse.h"

#define MAXV 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    sv vals[MAXV];
    int nv = 0;
    size_t start = 0;
    for (size_t i = 0; i <= size && nv < MAXV; i++) {
        if (i == size || (unsigned char)p[i] == 0xff) {
            vals[nv++] = (sv){p + start, i - start};
            start = i + 1;
        }
    }
    buf b;
    buf_init(&b, (size_t)1 << 24);
    for (int i = 0; i < nv; i++) ch_tsv_str(&b, vals[i]);
    if (b.failed) abort();
    char *line = b.p + 1; /* the first value has no tab before it */
    size_t len = b.len - 1;
    size_t tabs = 0;
    for (size_t i = 0; i < len; i++) {
        if (line[i] == '\n') abort();
        tabs += line[i] == '\t';
    }
    if (tabs != (size_t)nv - 1) abort();
    char *f[MAXV];
    size_t fl[MAXV];
    int n = ch_tsv_split(line, len, f, fl, MAXV);
    if (n != nv) abort();
    for (int i = 0; i < n; i++) {
        int was_null = vals[i].n == 2 && !memcmp(vals[i].p, "\\N", 2);
        if (fl[i] != vals[i].n && !was_null) abort();
        if (!was_null && memcmp(f[i], vals[i].p, fl[i])) abort();
    }
    buf_free(&b);

    char *raw = malloc(size ? size : 1);
    if (!raw) return 0;
    memcpy(raw, data, size);
    n = ch_tsv_split(raw, size, f, fl, MAXV);
    for (int i = 0; i < n; i++)
        if (f[i] < raw || fl[i] > size || f[i] + fl[i] > raw + size) abort();
    free(raw);
    return 0;
}
