/*
 * fuzz_json -- libFuzzer target for the strict JSON reader and the encoder.
 *
 * Properties checked on every input:
 *   - the parser never crashes, and whatever it accepts re-encodes to a
 *     document it accepts again, byte-identical on a second round;
 *   - the in-place parser accepts exactly the same inputs and yields the
 *     same values;
 *   - json_parse_keep (fast path or not) accepts the same inputs, fails
 *     with the same error at the same byte, and builds exactly the members
 *     it is asked for (here: those with keys of even length);
 *   - any bytes given to the string encoder come out as a JSON string the
 *     parser accepts (escaping and UTF-8 repair are total).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "encode.h"
#include "json.h"

/* json_parse_keep's questions: keys of even length are kept. */
static int want_even(void *ud, int depth, int pslot, const char *key, size_t n)
{
    (void)ud, (void)depth, (void)pslot, (void)key;
    return n % 2 == 0;
}
static void got_one(void *ud, int slot, const jv *v) { (void)slot, (void)v, ++*(size_t *)ud; }
static void reset_count(void *ud) { *(size_t *)ud = 0; }

/* A tree written out; `even`: only the object members want_even keeps
 * (counted in *kept). */
static void dump(buf *b, const jv *v, int even, size_t *kept)
{
    if (v->type != JV_OBJ && v->type != JV_ARR) {
        jv_write(b, v);
        return;
    }
    buf_putc(b, v->type == JV_OBJ ? '{' : '[');
    for (const jv *e = v->child; e; e = e->next) {
        if (v->type == JV_OBJ) {
            if (even && e->keylen % 2) continue;
            if (even) ++*kept;
            enc_str(b, e->key, e->keylen);
            buf_putc(b, ':');
        }
        dump(b, e, even, kept);
        buf_putc(b, ',');
    }
    buf_putc(b, v->type == JV_OBJ ? '}' : ']');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_arena a;
    json_arena_init(&a, 1 << 24);
    buf b1, b2;
    buf_init(&b1, 1 << 26);
    buf_init(&b2, 1 << 26);

    json_error e0;
    jv *v = json_parse(&a, (const char *)data, size, &e0);
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

    /* The parse that keeps some members: the same verdict, those members. */
    memcpy(copy, data, size);
    json_arena a2;
    json_arena_init(&a2, 1 << 24);
    size_t given = 0, kept = 0;
    /* odd sizes: copied strings, the input left as it was */
    json_keep k = {.want = want_even, .got = got_one, .reset = reset_count, .ud = &given, .copy = (int)(size % 2)};
    json_error e1;
    jv *w3 = json_parse_keep(&a2, copy, size, &k, &e1);
    if (!w3 != !v || (k.copy && size && memcmp(copy, data, size) != 0)) abort();
    if (!v && (e0.offset != e1.offset || strcmp(e0.what, e1.what) != 0)) abort();
    if (w3) {
        json_arena_reset(&a);
        v = json_parse(&a, (const char *)data, size, NULL);
        buf_reset(&b1);
        buf_reset(&b2);
        dump(&b1, v, 1, &kept);
        dump(&b2, w3, 0, NULL);
        if (b1.len != b2.len || memcmp(b1.p, b2.p, b1.len) != 0 || given != kept) abort();
    }
    json_arena_free(&a2);
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
