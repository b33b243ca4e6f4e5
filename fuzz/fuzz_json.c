/*
 * fuzz_json -- libFuzzer target for the strict JSON reader and the encoder.
 *
 * Properties checked on every input:
 *   - the parser never crashes, and whatever it accepts re-encodes to a
 *     document it accepts again, byte-identical on a second round;
 *   - the in-place parser accepts exactly the same inputs and yields the
 *     same values;
 *   - any bytes given to the string encoder come out as a JSON string the
 *     parser accepts (escaping and UTF-8 repair are total).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "encode.h"
#include "json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_arena a;
    json_arena_init(&a, 1 << 24);
    buf b1, b2;
    buf_init(&b1, 1 << 26);
    buf_init(&b2, 1 << 26);

    jv *v = json_parse(&a, (const char *)data, size, NULL);
    if (v) {
        jv_write(&b1, v);
        json_arena_reset(&a);
        jv *w = json_parse(&a, b1.p, b1.len, NULL);
        if (!w) abort();
        jv_write(&b2, w);
        if (b1.len != b2.len || memcmp(b1.p, b2.p, b1.len) != 0) abort();
    }

    /* The in-place parser accepts the same documents and reads the same values. */
    char *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    json_arena_reset(&a);
    buf_reset(&b2);
    jv *w2 = json_parse_inplace(&a, copy, size, NULL);
    if (!w2 != !v) abort();
    if (w2) {
        jv_write(&b2, w2);
        if (b1.len != b2.len || memcmp(b1.p, b2.p, b1.len) != 0) abort();
    }
    free(copy);

    buf_reset(&b1);
    enc_str(&b1, (const char *)data, size);
    json_arena_reset(&a);
    jv *s = json_parse(&a, b1.p, b1.len, NULL);
    if (!s || s->type != JV_STR) abort();

    buf_free(&b1);
    buf_free(&b2);
    json_arena_free(&a);
    return 0;
}
