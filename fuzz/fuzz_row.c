/*
 * fuzz_row -- libFuzzer target for the two ways a line becomes a row.
 *
 * Readers of many lines parse only the members rows use (row_from_line,
 * json_parse_keep); everything else parses the whole tree and reads the
 * row from it (json_parse + row_from_json).  The input is a run of lines
 * read both ways, each way with its own reader context.  Checked on every
 * line: the same lines are accepted (and rejected with the same error at
 * the same byte), the same lines are events, the rows are equal member by
 * member, and the contexts the lines leave behind are equal.  A third
 * reading (row_from_line with copy) must agree too and leave its input
 * as it was.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "row.h"

static int sv_same(sv a, sv b)
{
    if (!a.p || !b.p) return !a.p == !b.p;
    return a.n == b.n && memcmp(a.p, b.p, a.n) == 0;
}

static int rows_same(row *a, row *b)
{
    sv *sa[ROW_MAX_STRINGS], *sb[ROW_MAX_STRINGS];
    size_t n = row_strings(a, sa);
    row_strings(b, sb);
    for (size_t i = 0; i < n; i++)
        if (!sv_same(*sa[i], *sb[i])) return 0;
    if (!sv_same(a->reason, b->reason) || !sv_same(a->run_model, b->run_model)) return 0;
    /* The numbers, bit for bit: everything after the strings. */
    size_t from = offsetof(row, has);
    return memcmp((char *)a + from, (char *)b + from, sizeof *a - from) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_arena a1, a2, a3;
    json_arena_init(&a1, 1 << 24);
    json_arena_init(&a2, 1 << 24);
    json_arena_init(&a3, 1 << 24);
    row_ctx c1, c2, c3;
    row_ctx_init(&c1, "fuzz");
    row_ctx_init(&c2, "fuzz");
    row_ctx_init(&c3, "fuzz");
    char *copy = malloc(size ? size : 1), *kept = malloc(size ? size : 1);
    if (!copy || !kept) {
        free(copy);
        free(kept);
        return 0;
    }
    memcpy(copy, data, size);
    memcpy(kept, data, size);
    const char *s = (const char *)data;
    for (size_t at = 0; at < size;) {
        const char *nl = memchr(s + at, '\n', size - at);
        size_t len = nl ? (size_t)(nl - (s + at)) : size - at;
        json_arena_reset(&a1);
        json_arena_reset(&a2);
        json_arena_reset(&a3);
        json_error e1, e2, e3;
        row r1, r2, r3;
        const jv *v1 = json_parse(&a1, s + at, len, &e1);
        int ev1 = v1 && row_from_json(v1, &c1, &r1);
        const jv *v2;
        int ev2 = row_from_line(&a2, copy + at, len, 0, &c2, &r2, &v2, &e2);
        if (!v1 != !v2) abort();
        if (!v1 && (e1.offset != e2.offset || strcmp(e1.what, e2.what) != 0)) abort();
        if (ev1 != ev2) abort();
        if (ev1 && !rows_same(&r1, &r2)) abort();
        if (memcmp(&c1, &c2, sizeof c1) != 0) abort();
        const jv *v3;
        int ev3 = row_from_line(&a3, kept + at, len, 1, &c3, &r3, &v3, &e3);
        if (!v1 != !v3 || ev1 != ev3 || memcmp(kept + at, s + at, len) != 0) abort();
        if (!v1 && (e1.offset != e3.offset || strcmp(e1.what, e3.what) != 0)) abort();
        if (ev1 && !rows_same(&r1, &r3)) abort();
        if (memcmp(&c1, &c3, sizeof c1) != 0) abort();
        at += len + 1;
    }
    free(copy);
    free(kept);
    json_arena_free(&a1);
    json_arena_free(&a2);
    json_arena_free(&a3);
    return 0;
}
