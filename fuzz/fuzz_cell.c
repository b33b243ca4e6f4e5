/*
 * fuzz_cell -- libFuzzer target for the decoders of the database's
 * rollup: aggregate cells, the sketches inside them, and rollup keys.
 * These read bytes from a file that anyone may have written, so every
 * input must be either rejected or read within its bounds.
 *
 * Properties checked on every input:
 *   - nothing crashes or reads outside the input (ASan);
 *   - a rejected cell or sketch leaves its target unchanged;
 *   - an accepted cell or sketch re-encodes to bytes that decode again,
 *     and encoding is then stable (encode . decode is a fixed point);
 *   - an accepted key's strings lie inside the input, its ok and kind in
 *     range.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agg.h"
#include "buf.h"
#include "rollup.h"
#include "sketch.h"

static void same_or_die(const buf *a, const buf *b)
{
    if (a->failed || b->failed) return; /* over the cap: nothing to compare */
    if (a->len != b->len || memcmp(a->p, b->p, a->len) != 0) abort();
}

static void check_cell(const uint8_t *data, size_t size)
{
    buf e0, e1, e2;
    buf_init(&e0, 1 << 22);
    buf_init(&e1, 1 << 22);
    buf_init(&e2, 1 << 22);
    agg_cell c;
    agg_cell_init(&c);
    agg_cell_encode(&c, &e0);
    if (agg_cell_decode_merge(&c, data, size) == 0) {
        agg_cell_encode(&c, &e1);
        agg_cell d;
        agg_cell_init(&d);
        if (agg_cell_decode_merge(&d, e1.p, e1.len) != 0) abort();
        agg_cell_encode(&d, &e2);
        agg_cell_free(&d);
        same_or_die(&e1, &e2);
    } else {
        agg_cell_encode(&c, &e1);
        same_or_die(&e0, &e1);
    }
    agg_cell_free(&c);
    buf_free(&e0);
    buf_free(&e1);
    buf_free(&e2);
}

static void check_sketch(const uint8_t *data, size_t size)
{
    buf e0, e1, e2;
    buf_init(&e0, 1 << 20);
    buf_init(&e1, 1 << 20);
    buf_init(&e2, 1 << 20);
    sketch s;
    sketch_init(&s);
    sketch_add(&s, 1000); /* a non-empty target: merging must add, not replace */
    sketch_encode(&s, &e0);
    long used = sketch_decode_merge(&s, data, size);
    if (used > (long)size) abort();
    sketch_encode(&s, &e1);
    if (used < 0) {
        same_or_die(&e0, &e1);
    } else {
        sketch t;
        sketch_init(&t);
        if (sketch_decode_merge(&t, (const unsigned char *)e1.p, e1.len) != (long)e1.len) abort();
        sketch_encode(&t, &e2);
        same_or_die(&e1, &e2);
        double q = sketch_quantile(&t, 0.5);
        if (t.n && !(q >= t.min && q <= t.max) && !(t.low == t.n)) abort();
        sketch_free(&t);
    }
    sketch_free(&s);
    buf_free(&e0);
    buf_free(&e1);
    buf_free(&e2);
}

static void check_key(const uint8_t *data, size_t size)
{
    rollup_key k;
    if (rollup_key_decode(data, size, 7, &k) != 0) return;
    const char *lo = (const char *)data, *hi = lo + size;
    for (int i = 0; i < RK_NSTR; i++)
        if (k.s[i].p && (k.s[i].p < lo || k.s[i].p + k.s[i].n > hi)) abort();
    if (k.ok < -1 || k.ok > 1 || k.agg < AGG_NONE || k.agg > AGG_LAST || k.minute != 7) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_cell(data, size);
    check_sketch(data, size);
    check_key(data, size);
    return 0;
}
