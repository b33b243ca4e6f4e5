/*
 * test_encode -- the JSON encoder's escaping and repair, and the strict
 * reader's verdicts on valid and invalid documents.
 */
#include <math.h>

#include "encode.h"
#include "helpers.h"

static char out[4096];

static const char *enc(const char *s, size_t n, int *repaired)
{
    buf b;
    buf_init(&b, 1 << 16);
    int r = enc_str(&b, s, n);
    if (repaired) *repaired = r;
    assert_false(b.failed);
    assert_true(b.len < sizeof out);
    memcpy(out, b.p, b.len);
    out[b.len] = 0;
    buf_free(&b);
    return out;
}

static void test_escapes(void **state)
{
    (void)state;
    int rep;
    assert_string_equal(enc("plain", 5, &rep), "\"plain\"");
    assert_int_equal(rep, 0);
    assert_string_equal(enc("a\"b\\c", 5, NULL), "\"a\\\"b\\\\c\"");
    assert_string_equal(enc("\n\r\t\b\f", 5, NULL), "\"\\n\\r\\t\\b\\f\"");
    assert_string_equal(enc("\x01\x1f", 2, NULL), "\"\\u0001\\u001f\"");
    assert_string_equal(enc("a\0b", 3, NULL), "\"a\\u0000b\"");
    /* DEL is legal in JSON, but escaped so that lines stay printable. */
    assert_string_equal(enc("\x7f", 1, NULL), "\"\\u007f\"");
    /* U+2028 / U+2029 end lines in JavaScript: escaped. */
    assert_string_equal(enc("x\xe2\x80\xa8y\xe2\x80\xa9", 8, NULL), "\"x\\u2028y\\u2029\"");
    /* Valid multi-byte characters pass through. */
    assert_string_equal(enc("h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 12, &rep), "\"h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
    assert_int_equal(rep, 0);
}

static void test_utf8_repair(void **state)
{
    (void)state;
    int rep;
    /* Lone continuation, truncated sequence, overlong, surrogate, > U+10FFFF, 0xFF. */
    const char *bad[] = {"\x80", "\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xff", "\xe2\x82"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *e = enc(bad[i], strlen(bad[i]), &rep);
        assert_int_equal(rep, 1);
        /* Only U+FFFD replacements and quotes: no raw invalid byte survives. */
        json_arena a;
        json_arena_init(&a, 1 << 16);
        assert_non_null(json_parse(&a, e, strlen(e), NULL));
        json_arena_free(&a);
        assert_non_null(strstr(e, "\xef\xbf\xbd"));
    }
    /* Repair keeps the good parts. */
    assert_string_equal(enc("ok\xffok", 5, NULL), "\"ok\xef\xbf\xbdok\"");
}

static void test_numbers(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 1024);
    enc_double(&b, NAN);
    buf_putc(&b, ' ');
    enc_double(&b, INFINITY);
    buf_putc(&b, ' ');
    enc_double(&b, -INFINITY);
    buf_putc(&b, ' ');
    enc_double(&b, 0.1);
    buf_putc(&b, ' ');
    enc_double(&b, 3.0);
    buf_putc(&b, ' ');
    enc_double(&b, 1e300);
    buf_putc(&b, ' ');
    enc_i64(&b, INT64_MIN);
    buf_putc(&b, ' ');
    enc_us_as_seconds(&b, 1234567);
    buf_putc(&b, ' ');
    enc_us_as_seconds(&b, 5);
    buf_putc(&b, 0);
    assert_string_equal(b.p, "null null null 0.1 3 1e+300 -9223372036854775808 1.234567 0.000005");
    /* Shortest form that reads back exactly. */
    double vals[] = {0.1 + 0.2, 1.0 / 3, 2.5e-8, 123456.789};
    for (size_t i = 0; i < 4; i++) {
        buf_reset(&b);
        enc_double(&b, vals[i]);
        buf_putc(&b, 0);
        assert_true(strtod(b.p, NULL) == vals[i]);
    }
    /* Doubles that need exactly 16 digits: no 17th noise digit (these are
     * what Python's repr() writes for them). */
    static const struct { double v; const char *want; } sixteen[] = {
        {8626903632.435093, "8626903632.435093"},
        {3295621231.654795, "3295621231.654795"},
        {5045419583.098643, "5045419583.098643"},
        {0.1 + 0.2, "0.30000000000000004"},
    };
    for (size_t i = 0; i < sizeof sixteen / sizeof sixteen[0]; i++) {
        buf_reset(&b);
        enc_double(&b, sixteen[i].v);
        buf_putc(&b, 0);
        assert_string_equal(b.p, sixteen[i].want);
    }
    /* The fast path for few decimals writes what %.15g / %.16g / %.17g would:
     * values on a 1e-6 grid (the fast path's) and arbitrary ones. */
    uint64_t x = 0x853c49e6748fea9bull;
    for (int i = 0; i < 1000000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double v;
        if (i % 2) v = (double)(int64_t)(x % 2000000000000ull) / 1e6 * ((x >> 40) & 1 ? -1 : 1);
        else v = ldexp((double)(x >> 11) / 9007199254740992.0, (int)((x >> 3) % 60) - 20);
        if (i % 5 == 0) v = floor(v * 1000) / 1000;
        static const double edge[] = {-0.25, -0.001, 0.001, -0.000999, 0.5, -999999999.999999, 123.000001};
        if (i < (int)(sizeof edge / sizeof edge[0])) v = edge[i];
        char want[40];
        snprintf(want, sizeof want, "%.15g", v);
        if (strtod(want, NULL) != v) snprintf(want, sizeof want, "%.16g", v);
        if (strtod(want, NULL) != v) snprintf(want, sizeof want, "%.17g", v);
        if (fabs(v) < 1e15 && v == (double)(int64_t)v) snprintf(want, sizeof want, "%lld", (long long)v);
        buf_reset(&b);
        enc_double(&b, v);
        buf_putc(&b, 0);
        if (strcmp(b.p, want)) fail_msg("%.17g: wrote %s, want %s", v, b.p, want);
    }
    buf_free(&b);
}

static void test_utf8_cut(void **state)
{
    (void)state;
    assert_int_equal(utf8_cut("abc", 3), 3);
    assert_int_equal(utf8_cut("ab\xc3\xa9", 3), 2);        /* would split é */
    assert_int_equal(utf8_cut("ab\xc3\xa9", 4), 4);
    assert_int_equal(utf8_cut("a\xe2\x82\xac", 3), 1);     /* would split € */
    assert_int_equal(utf8_cut("a\xf0\x9f\x98\x80", 4), 1); /* would split 😀 */
    assert_int_equal(utf8_cut("a\xf0\x9f\x98\x80", 5), 5);
}

static void test_buf_cap(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 10);
    buf_put(&b, "0123456789", 10);
    assert_false(b.failed);
    buf_putc(&b, 'x');
    assert_true(b.failed);
    assert_int_equal(b.len, 10);
    buf_putc(&b, 'y'); /* no-op after failure */
    assert_int_equal(b.len, 10);
    buf_free(&b);
}

static int parses(const char *s)
{
    json_arena a;
    json_arena_init(&a, 1 << 20);
    int ok = json_parse(&a, s, strlen(s), NULL) != NULL;
    json_arena_free(&a);
    return ok;
}

static void test_json_strict(void **state)
{
    (void)state;
    const char *good[] = {
        "0", "-0", "1.5e10", "-1E-2", "\"\"", "\"\\u00e9\\ud83d\\ude00\"", "[]", "{}", " [1, 2 ,3] ",
        "{\"a\":{\"b\":[true,false,null]}}", "\"\\/\\b\\f\\n\\r\\t\\\\\\\"\"", "123456789012345678901234567890",
        "\"h\xc3\xa9\"",
    };
    const char *bad[] = {
        "", " ", "01", "1.", ".5", "-", "+1", "1e", "[1,]", "{\"a\":1,}", "{a:1}", "'x'", "[1 2]",
        "\"\x01\"", "\"\\x\"", "\"\\ud800\"", "\"\\udc00\"", "\"\xff\"", "\"\xc0\xaf\"", "nul", "true false",
        "{\"a\"}", "[", "\"abc", "NaN", "Infinity", "{\"a\":1}x",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (!parses(good[i])) fail_msg("rejected valid: %s", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (parses(bad[i])) fail_msg("accepted invalid: %s", bad[i]);
    /* Depth cap. */
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    char *d = malloc(201);
    memcpy(d, deep, 200);
    d[200] = 0;
    assert_false(parses(d));
    memset(d, '[', 64);
    memset(d + 64, ']', 64);
    d[128] = 0;
    assert_true(parses(d));
    free(d);
}

static void test_json_values(void **state)
{
    (void)state;
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const char *s = "{\"i\":-42,\"big\":12345678901234567890,\"f\":0.5,\"s\":\"a\\nb\\u00e9\",\"e\":1e3}";
    const jv *v = json_parse(&a, s, strlen(s), NULL);
    assert_non_null(v);
    assert_int_equal(jv_int(jv_get(v, "i"), 0), -42);
    assert_true(jv_num(jv_get(v, "big"), 0) > 1.2e19);
    assert_true(jv_num(jv_get(v, "f"), 0) == 0.5);
    assert_string_equal(jv_str(jv_get(v, "s")), "a\nb\xc3\xa9");
    assert_int_equal(jv_int(jv_get(v, "e"), 0), 1000);
    buf b;
    buf_init(&b, 1024);
    jv_write(&b, v);
    buf_putc(&b, 0);
    assert_string_equal(b.p, "{\"i\":-42,\"big\":12345678901234567890,\"f\":0.5,\"s\":\"a\\nb\xc3\xa9\",\"e\":1e3}");
    buf_free(&b);
    /* The arena cap bounds what one document may take. */
    json_arena small;
    json_arena_init(&small, 1024);
    char big[8192];
    big[0] = '[';
    size_t n = 1;
    while (n < sizeof big - 4) { big[n++] = '1'; big[n++] = ','; }
    big[n++] = '1';
    big[n++] = ']';
    json_error err;
    assert_null(json_parse(&small, big, n, &err));
    assert_string_equal(err.what, "document too large");
    json_arena_free(&small);
    json_arena_free(&a);
}

/* The reader's numbers are exactly strtod's: two million decimals of 1 to
 * 20 digits with the point anywhere (the fast paths: up to 2^53, 17-19
 * digits through 64-bit precision, and strtod beyond), and the values
 * tally's encoder writes. */
static void test_json_numbers_exact(void **state)
{
    (void)state;
    uint64_t x = 0x2545F4914F6CDD1Dull;
    json_arena a;
    json_arena_init(&a, 1 << 16);
    char txt[64];
    for (int i = 0; i < 2000000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int digits = 1 + (int)(x % 20), point = (int)((x >> 8) % (unsigned)(digits + 1));
        size_t n = 0;
        if ((x >> 20) & 1) txt[n++] = '-';
        uint64_t y = x * 0x9E3779B97F4A7C15ull;
        for (int d = 0; d < digits; d++) {
            if (d == point && d) {
                txt[n++] = '.';
            }
            /* no leading zeros in the integer part (JSON forbids them) */
            int digit = (int)((y >> (d % 60)) % 10);
            if (d == 0 && digit == 0 && point != 1) digit = 1 + (int)(y % 9);
            txt[n++] = (char)('0' + digit);
            y = y * 6364136223846793005ull + 1442695040888963407ull;
        }
        if (i % 3 == 0) {
            /* a double's shortest and 17-digit forms */
            double d;
            memcpy(&d, &x, sizeof d);
            if (d != d || isinf(d)) continue;
            n = (size_t)snprintf(txt, sizeof txt, i % 2 ? "%.17g" : "%.15g", d);
            if (strchr(txt, 'e') || strchr(txt, 'n') || strchr(txt, 'i')) continue;
        }
        txt[n] = 0;
        json_arena_reset(&a);
        const jv *v = json_parse(&a, txt, n, NULL);
        if (!v) fail_msg("'%s' did not parse", txt);
        double got = jv_num(v, NAN), want = strtod(txt, NULL);
        if (memcmp(&got, &want, sizeof got)) fail_msg("'%s': %.17g, strtod %.17g", txt, got, want);
    }
    json_arena_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escapes),     cmocka_unit_test(test_utf8_repair), cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_utf8_cut),    cmocka_unit_test(test_buf_cap),     cmocka_unit_test(test_json_strict),
        cmocka_unit_test(test_json_values), cmocka_unit_test(test_json_numbers_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
