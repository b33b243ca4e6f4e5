/*
 * encode -- JSON output with escaping and UTF-8 repair (see encode.h).
 *
 * The string encoder is on the writer thread's hot loop, so plain ASCII
 * runs are copied in one memcpy; only bytes that need attention (control,
 * quote, backslash, bytes >= 0x80) leave the fast path.
 */
#include "encode.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* 0: copy as is; 1: needs escaping; 2: start of a multi-byte sequence. */
static const unsigned char enc_class[256] = {
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,
    2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2, 2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,
    2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2, 2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,
    2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2, 2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,
    2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2, 2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,
};

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 if invalid.
 * Rejects overlong forms, surrogates and code points above U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) { *cp = c; return 1; }
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

size_t utf8_cut(const char *s, size_t n)
{
    /* Step back over at most 3 continuation bytes to a lead byte, and cut
     * before it if its sequence would not fit. */
    const unsigned char *u = (const unsigned char *)s;
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && (u[i - 1] & 0xC0) == 0x80) { i--; back++; }
    if (i == 0) return n;
    unsigned c = u[i - 1];
    size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (c >= 0x80 && need != back + 1) return i - 1;
    return n;
}

int enc_str(buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    int repaired = 0;
    size_t i = 0;
    buf_putc(b, '"');
    while (i < n) {
        size_t j = i;
        /* Eight bytes at a time while none needs attention. */
        while (j + 8 <= n) {
            uint64_t x;
            memcpy(&x, u + j, 8);
            const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
            uint64_t q = x ^ (ones * '"'), bs = x ^ (ones * '\\'), del = x ^ (ones * 0x7f);
            uint64_t bad = ((x - ones * 0x20) | (q - ones) | (bs - ones) | (del - ones)) & ~x & high;
            if (bad | (x & high)) break;
            j += 8;
        }
        while (j < n && enc_class[u[j]] == 0) j++;
        if (j > i) buf_put(b, s + i, j - i);
        if (j >= n) break;
        i = j;
        unsigned c = u[i];
        if (enc_class[c] == 1) {
            char e[6];
            switch (c) {
            case '"': buf_put(b, "\\\"", 2); break;
            case '\\': buf_put(b, "\\\\", 2); break;
            case '\n': buf_put(b, "\\n", 2); break;
            case '\r': buf_put(b, "\\r", 2); break;
            case '\t': buf_put(b, "\\t", 2); break;
            case '\b': buf_put(b, "\\b", 2); break;
            case '\f': buf_put(b, "\\f", 2); break;
            default:
                e[0] = '\\'; e[1] = 'u'; e[2] = '0'; e[3] = '0';
                e[4] = hex[c >> 4]; e[5] = hex[c & 15];
                buf_put(b, e, 6);
            }
            i++;
            continue;
        }
        uint32_t cp;
        size_t len = utf8_seq(u + i, n - i, &cp);
        if (len == 0) {
            buf_put(b, "\xEF\xBF\xBD", 3); /* U+FFFD */
            repaired = 1;
            i++;
        } else if (cp == 0x2028 || cp == 0x2029) {
            buf_put(b, cp == 0x2028 ? "\\u2028" : "\\u2029", 6);
            i += len;
        } else {
            buf_put(b, s + i, len);
            i += len;
        }
    }
    buf_putc(b, '"');
    return repaired;
}

static const char digit_pairs[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Two digits per division: this runs several times per event. */
void enc_i64(buf *b, int64_t v)
{
    char tmp[24];
    int pos = 24;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    while (u >= 100) {
        unsigned d = (unsigned)(u % 100) * 2;
        u /= 100;
        tmp[--pos] = digit_pairs[d + 1];
        tmp[--pos] = digit_pairs[d];
    }
    if (u >= 10) {
        tmp[--pos] = digit_pairs[u * 2 + 1];
        tmp[--pos] = digit_pairs[u * 2];
    } else {
        tmp[--pos] = (char)('0' + u);
    }
    if (v < 0) tmp[--pos] = '-';
    buf_put(b, tmp + pos, (size_t)(24 - pos));
}

void enc_double(buf *b, double v)
{
    if (!isfinite(v)) {
        buf_put(b, "null", 4);
        return;
    }
    if (fabs(v) < 1e15 && v == (double)(int64_t)v) {
        enc_i64(b, (int64_t)v);
        return;
    }
    /* Most measured values have a few decimals (87.416875, 12.5): when
     * k / 10^6 reads back as v, its digits are what %.15g writes (v is
     * within half an ulp of them, far inside %.15g's rounding), without
     * two printf and a strtod. */
    if (fabs(v) >= 1e-3 && fabs(v) < 1e9) {
        int64_t k = llround(v * 1e6);
        if ((double)k / 1e6 == v) {
            uint64_t a = (uint64_t)(k < 0 ? -k : k), fp = a % 1000000;
            if (k < 0) buf_putc(b, '-'); /* before the digits: -0.5 has integer part 0 */
            enc_i64(b, (int64_t)(a / 1000000));
            int w = 6;
            while (w > 0 && fp % 10 == 0) {
                fp /= 10;
                w--;
            }
            if (w) {
                char tmp[8];
                tmp[0] = '.';
                for (int i = w; i >= 1; i--, fp /= 10) tmp[i] = (char)('0' + fp % 10);
                buf_put(b, tmp, (size_t)w + 1);
            }
            return;
        }
    }
    /* The shortest of 15, 16, 17 significant digits that reads back as v:
     * skipping 16 wrote a noise digit for about half of all doubles. */
    char tmp[40];
    int n = snprintf(tmp, sizeof tmp, "%.15g", v);
    if (strtod(tmp, NULL) != v) n = snprintf(tmp, sizeof tmp, "%.16g", v);
    if (strtod(tmp, NULL) != v) n = snprintf(tmp, sizeof tmp, "%.17g", v);
    if (n > 0 && (size_t)n < sizeof tmp) buf_put(b, tmp, (size_t)n);
    else buf_put(b, "null", 4);
}

void enc_us_as_seconds(buf *b, int64_t us)
{
    if (us < 0) us = 0;
    enc_i64(b, us / 1000000);
    unsigned f = (unsigned)(us % 1000000);
    char frac[7];
    frac[0] = '.';
    for (int k = 5; k >= 1; k -= 2) {
        unsigned d = (f % 100) * 2;
        f /= 100;
        frac[k] = digit_pairs[d];
        frac[k + 1] = digit_pairs[d + 1];
    }
    buf_put(b, frac, 7);
}

void enc_iso8601(buf *b, time_t sec)
{
    struct tm tm;
    char tmp[32];
    gmtime_r(&sec, &tm);
    size_t n = strftime(tmp, sizeof tmp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    buf_putc(b, '"');
    buf_put(b, tmp, n);
    buf_putc(b, '"');
}

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i])) return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int iso8601_parse(const char *s, double *out)
{
    if (!s) return -1;
    size_t n = strlen(s);
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int y, mo, d, h = 0, mi = 0, se = 0;
    if (n < 10 || digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) || s[7] != '-' || digits(s + 8, 2, &d))
        return -1;
    const char *p = s + 10;
    double frac = 0, off = 0;
    if (*p == 'T' || *p == ' ') {
        p++;
        if (strlen(p) < 5 || digits(p, 2, &h) || p[2] != ':' || digits(p + 3, 2, &mi)) return -1;
        p += 5;
        if (*p == ':') {
            if (digits(p + 1, 2, &se)) return -1;
            p += 3;
        }
        if (*p == '.') {
            char *end;
            frac = strtod(p, &end);
            p = end;
        }
        if (*p == 'Z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int oh, om = 0;
            if (digits(p + 1, 2, &oh)) return -1;
            const char *q = p + 3;
            if (*q == ':') q++;
            if (*q && digits(q, 2, &om)) return -1;
            off = (oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
            p = *q ? q + 2 : q;
        }
    }
    if (*p) return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60) return -1;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = se;
    *out = (double)timegm(&tm) + frac - off;
    return 0;
}
