/*
 * json -- strict RFC 8259 parser into an arena-allocated tree (see json.h).
 *
 * Recursive descent with an explicit depth cap.  Strings are unescaped into
 * the arena; numbers keep their raw text (so a re-encoded document keeps
 * every digit) plus a double and, for plain integers, an int64.
 */
#include "json.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "encode.h"

#define ARENA_BLOCK 16384

typedef struct arena_hdr {
    char *next;
    size_t size;
} arena_hdr;

void json_arena_init(json_arena *a, size_t max)
{
    memset(a, 0, sizeof *a);
    a->max = max;
}

void json_arena_free(json_arena *a)
{
    char *b = a->blocks;
    while (b) {
        char *n = ((arena_hdr *)b)->next;
        free(b);
        b = n;
    }
    json_arena_init(a, a->max);
}

void json_arena_reset(json_arena *a)
{
    if (!a->blocks) return;
    /* Free all but the first block (the most recently added is at the
     * head; keep the last one in the list, which is the oldest). */
    char *b = a->blocks, *keep = NULL;
    while (b) {
        char *n = ((arena_hdr *)b)->next;
        if (!n) keep = b;
        else free(b);
        b = n;
    }
    a->blocks = keep;
    ((arena_hdr *)keep)->next = NULL;
    a->cur = keep;
    a->size = ((arena_hdr *)keep)->size;
    a->used = sizeof(arena_hdr);
    a->total = a->size;
}

/* n bytes (a multiple of 8) from a new block. */
static void *arena_grow(json_arena *a, size_t n)
{
    size_t sz = n + sizeof(arena_hdr) > ARENA_BLOCK ? n + sizeof(arena_hdr) : ARENA_BLOCK;
    if (a->total + sz > a->max) return NULL;
    char *blk = malloc(sz);
    if (!blk) return NULL;
    ((arena_hdr *)blk)->next = a->blocks;
    ((arena_hdr *)blk)->size = sz;
    a->blocks = blk;
    a->cur = blk;
    a->size = sz;
    a->used = sizeof(arena_hdr) + n;
    a->total += sz;
    return blk + sizeof(arena_hdr);
}

static inline void *arena_alloc(json_arena *a, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    if (!a->cur || a->size - a->used < n) return arena_grow(a, n);
    void *p = a->cur + a->used;
    a->used += n;
    return p;
}

typedef struct parser {
    const unsigned char *s, *p, *end;
    json_arena *a;
    json_error *err;
    int depth;
    unsigned char *inplace;   /* json_parse_inplace: the writable input */
    const json_keep *keep;    /* json_parse_keep: which members to build */
    int skip;                 /* > 0: inside a member not built (checked only) */
    int slot;                 /* the slot of the kept member we are in */
    jv scratch;               /* what a value not built "is" */
} parser;

static jv *fail(parser *ps, const char *what)
{
    if (ps->err && !ps->err->what) {
        ps->err->offset = (size_t)(ps->p - ps->s);
        ps->err->what = what;
    }
    return NULL;
}

static inline void skip_ws(parser *ps)
{
    /* Lines tally writes have no whitespace: one test in the usual case. */
    if (ps->p < ps->end && *ps->p > ' ') return;
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int hex4(const unsigned char *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

/* Validates one UTF-8 sequence at p; returns its length or 0. */
static size_t utf8_valid(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if ((size_t)(end - p) < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    return len;
}

/* The first byte at or after q that is not plain ASCII inside a string
 * (a quote, backslash, control character or byte >= 0x80), or end.
 * Eight bytes at a time; at the first other byte, jump to it (the lowest
 * flagged byte is exact: the borrows that can flag a byte wrongly only
 * run upwards from a true one). */
static inline const unsigned char *plain_run(const unsigned char *q, const unsigned char *end)
{
    while (end - q >= 8) {
        uint64_t x;
        memcpy(&x, q, 8);
        const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
        uint64_t qt = x ^ (ones * '"'), bs = x ^ (ones * '\\');
        uint64_t hit = ((((x - ones * 0x20) | (qt - ones) | (bs - ones)) & ~x) | x) & high;
        if (hit) return q + (__builtin_ctzll(hit) >> 3);
        q += 8;
    }
    while (q < end && *q != '"' && *q != '\\' && *q >= 0x20 && *q < 0x80) q++;
    return q;
}

/* Parses a string at ps->p (at the opening quote). */
static const char *parse_string(parser *ps, size_t *outlen)
{
    const unsigned char *p = ps->p + 1;
    /* First pass: find the end and validate; count output bytes. */
    const unsigned char *q = p;
    int simple = 1;
    while (q < ps->end && *q != '"') {
        q = plain_run(q, ps->end);
        if (q >= ps->end || *q == '"') break;
        if (*q < 0x20) { ps->p = q; fail(ps, "control character in string"); return NULL; }
        if (*q == '\\') { simple = 0; q += 2; continue; }
        if (*q >= 0x80) {
            size_t l = utf8_valid(q, ps->end);
            if (!l) { ps->p = q; fail(ps, "invalid UTF-8"); return NULL; }
            q += l;
            continue;
        }
    }
    if (q >= ps->end) { fail(ps, "unterminated string"); return NULL; }
    size_t rawlen = (size_t)(q - p);
    if (simple && ps->skip) {
        /* Checked, not kept: nothing to copy or terminate. */
        *outlen = rawlen;
        ps->p = q + 1;
        return (const char *)p;
    }
    if (simple && ps->inplace) {
        /* No escapes: the string is its own bytes; the closing quote
         * becomes its terminator. */
        ps->inplace[q - ps->s] = 0;
        *outlen = rawlen;
        ps->p = q + 1;
        return (const char *)ps->inplace + (p - ps->s);
    }
    char *out = arena_alloc(ps->a, rawlen + 1);
    if (!out) { fail(ps, "document too large"); return NULL; }
    if (simple) {
        memcpy(out, p, rawlen);
        out[rawlen] = 0;
        *outlen = rawlen;
        ps->p = q + 1;
        return out;
    }
    size_t o = 0;
    while (p < q) {
        if (*p != '\\') { out[o++] = (char)*p++; continue; }
        p++;
        if (p >= q) { ps->p = p; fail(ps, "bad escape"); return NULL; }
        switch (*p) {
        case '"': out[o++] = '"'; p++; break;
        case '\\': out[o++] = '\\'; p++; break;
        case '/': out[o++] = '/'; p++; break;
        case 'b': out[o++] = '\b'; p++; break;
        case 'f': out[o++] = '\f'; p++; break;
        case 'n': out[o++] = '\n'; p++; break;
        case 'r': out[o++] = '\r'; p++; break;
        case 't': out[o++] = '\t'; p++; break;
        case 'u': {
            uint32_t cp, lo;
            if (q - p < 5 || hex4(p + 1, &cp)) { ps->p = p; fail(ps, "bad \\u escape"); return NULL; }
            p += 5;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (q - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    ps->p = p; fail(ps, "lone surrogate"); return NULL;
                }
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                ps->p = p; fail(ps, "lone surrogate"); return NULL;
            }
            /* A \u escape is 6 bytes and yields at most 3 (4 for a 12-byte
             * pair), so the output never outgrows rawlen. */
            o += put_utf8(out + o, cp);
            break;
        }
        default: ps->p = p; fail(ps, "bad escape"); return NULL;
        }
    }
    out[o] = 0;
    *outlen = o;
    ps->p = q + 1;
    return out;
}

static jv *new_value(parser *ps, jv_type t)
{
    if (ps->skip) return &ps->scratch;
    jv *v = arena_alloc(ps->a, sizeof *v);
    if (!v) return fail(ps, "document too large");
    *v = (jv){.type = (uint8_t)t};
    return v;
}

/* The end of the run of ASCII digits at p, eight bytes a step: a byte's
 * high bit is flagged when it is below '0' (the subtraction borrows into
 * it) or above '9' (the addition carries into it, or the byte had it).
 * Borrows and carries only move upward, so the lowest flagged byte is the
 * first that is not a digit. */
static inline const unsigned char *digit_end(const unsigned char *p, const unsigned char *end)
{
    while (end - p >= 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        uint64_t flag = ((x - 0x3030303030303030ull) | (x + 0x4646464646464646ull)) & 0x8080808080808080ull;
        if (flag) return p + (__builtin_ctzll(flag) >> 3);
        p += 8;
    }
    while (p < end && *p >= '0' && *p <= '9') p++;
    return p;
}

/* The value of eight ASCII digits loaded little-endian (the first, most
 * significant, in the lowest byte): pairs, then fours, then the eight
 * combined within the word, most significant part times its power of
 * ten plus the next. */
static inline uint64_t eight_digits(uint64_t x)
{
    x -= 0x3030303030303030ull;
    x = (x * 10 + (x >> 8)) & 0x00ff00ff00ff00ffull;
    x = (x * 100 + (x >> 16)) & 0x0000ffff0000ffffull;
    return (x * 10000 + (x >> 32)) & 0xffffffffull;
}

/* The value of n (at most 19) ASCII digits. */
static inline uint64_t digits_value(const unsigned char *s, size_t n)
{
    uint64_t v = 0;
    for (; n >= 8; s += 8, n -= 8) {
        uint64_t x;
        memcpy(&x, s, 8);
        v = v * 100000000u + eight_digits(x);
    }
    for (; n; s++, n--) v = v * 10 + (uint64_t)(*s - '0');
    return v;
}

/* Plain decimals (no exponent, at most 19 significant digits and 27 after
 * the point) read exactly -- the double strtod gives, without its cost.
 * Up to 2^53 the digits form an integer that a double holds exactly, and
 * so does the power of ten: one division is correctly rounded.  Beyond
 * (17-19 digits, as %.17g writes), the division is done in x87's 64-bit
 * mantissa, correctly rounded there, then rounded to 53 bits: that second
 * rounding is also correct unless the 64-bit result fell exactly halfway
 * between two doubles, which is checked (strtod decides those). */
static int fast_decimal(const unsigned char *s, const unsigned char *end, double *out)
{
    static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                   1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    static const uint64_t pow10u[] = {1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull, 10000000ull,
                                      100000000ull, 1000000000ull, 10000000000ull, 100000000000ull,
                                      1000000000000ull, 10000000000000ull, 100000000000000ull,
                                      1000000000000000ull, 10000000000000000ull, 100000000000000000ull,
                                      1000000000000000000ull, 10000000000000000000ull};
    int neg = *s == '-';
    uint64_t m = 0;
    int digits = 0, frac = 0, seen_dot = 0;
    /* Most numbers: at most 19 digits in all, read eight at a time (the
     * same m and frac as the loop below). */
    const unsigned char *i0 = s + neg, *i1 = digit_end(i0, end), *f0 = i1, *f1 = i1;
    if (i1 < end && *i1 == '.') f1 = digit_end(f0 = i1 + 1, end);
    size_t ni = (size_t)(i1 - i0), nf = (size_t)(f1 - f0);
    if (f1 == end && ni + nf <= 19) {
        m = digits_value(i0, ni) * pow10u[nf] + digits_value(f0, nf);
        frac = (int)nf;
        goto have;
    }
    for (const unsigned char *d = s + neg; d < end; d++) {
        if (*d == '.') {
            seen_dot = 1;
            continue;
        }
        if (*d < '0' || *d > '9') return 0;
        if (m || *d != '0') digits++;
        m = m * 10 + (uint64_t)(*d - '0');
        if (seen_dot) frac++;
        if (digits > 19 || frac > 27) return 0;
    }
have:;
    double v;
    if (m <= (1ull << 53) && frac <= 22) {
        v = (double)m / pow10[frac];
    } else {
#if LDBL_MANT_DIG == 64
        long double p = 1;
        for (int i = 0; i < frac; i++) p *= 10; /* exact: 10^27 < 2^64 * 2^27 */
        long double q = (long double)m / p;
        uint64_t bits; /* x87: the 64-bit mantissa is the first 8 bytes */
        memcpy(&bits, &q, sizeof bits);
        if ((bits & 0x7ff) == 0x400) return 0;
        v = (double)q;
#else
        return 0;
#endif
    }
    *out = neg ? -v : v;
    return 1;
}

/* A number's grammar at p: the position after it, or NULL with *bad
 * where it went wrong. */
static const unsigned char *scan_number(const unsigned char *p, const unsigned char *end, int *is_int,
                                        const unsigned char **bad)
{
    *is_int = 1;
    *bad = p;
    if (p < end && *p == '-') p++;
    if (p >= end) return NULL;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') p = digit_end(p + 1, end);
    else return NULL;
    if (p < end && *p == '.') {
        *is_int = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9') {
            *bad = p;
            return NULL;
        }
        p = digit_end(p + 1, end);
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        *is_int = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') {
            *bad = p;
            return NULL;
        }
        p = digit_end(p + 1, end);
    }
    return p;
}

static jv *parse_number(parser *ps)
{
    const unsigned char *start = ps->p, *bad;
    int is_int;
    const unsigned char *p = scan_number(ps->p, ps->end, &is_int, &bad);
    if (!p) {
        ps->p = bad;
        return fail(ps, "bad number");
    }
    jv *v = new_value(ps, JV_NUM);
    if (!v) return NULL;
    v->s = (const char *)start;
    v->n = (uint32_t)(p - start);
    v->is_int = (uint8_t)is_int;
    ps->p = p;
    return v;
}

static jv *parse_value(parser *ps);

static jv *parse_container(parser *ps, int obj)
{
    if (++ps->depth > JSON_MAX_DEPTH) return fail(ps, "nesting too deep");
    jv *v = new_value(ps, obj ? JV_OBJ : JV_ARR);
    if (!v) return NULL;
    jv **tail = &v->child;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == (obj ? '}' : ']')) {
        ps->p++;
        ps->depth--;
        return v;
    }
    for (;;) {
        const char *key = NULL;
        size_t keylen = 0;
        if (obj) {
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != '"') return fail(ps, "expected a key");
            key = parse_string(ps, &keylen);
            if (!key) return NULL;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') return fail(ps, "expected ':'");
            ps->p++;
        }
        /* json_parse_keep: a member is built only when asked for. */
        int slot = 0, outer = ps->slot, filtered = obj && ps->keep && !ps->skip;
        if (filtered) {
            slot = ps->keep->want(ps->keep->ud, ps->depth, ps->slot, key, keylen);
            if (slot) ps->slot = slot;
            else ps->skip++;
        }
        jv *e = parse_value(ps);
        if (filtered) {
            if (!slot) ps->skip--;
            ps->slot = outer;
        }
        if (!e) return NULL;
        if (ps->skip || (filtered && !slot)) goto next;
        e->key = key;
        e->keylen = (uint32_t)keylen;
        *tail = e;
        tail = &e->next;
        v->count++;
        if (slot) ps->keep->got(ps->keep->ud, slot, e);
    next:
        skip_ws(ps);
        if (ps->p >= ps->end) return fail(ps, "unterminated container");
        if (*ps->p == ',') { ps->p++; continue; }
        if (*ps->p == (obj ? '}' : ']')) { ps->p++; break; }
        return fail(ps, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    ps->depth--;
    return v;
}

static inline const unsigned char *literal(const unsigned char *p, const unsigned char *end, const char *w, size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, w, n) == 0 ? p + n : NULL;
}

static int lit(parser *ps, const char *w, size_t n)
{
    const unsigned char *p = literal(ps->p, ps->end, w, n);
    if (!p) return -1;
    ps->p = p;
    return 0;
}

static jv *parse_value(parser *ps)
{
    skip_ws(ps);
    if (ps->p >= ps->end) return fail(ps, "unexpected end");
    switch (*ps->p) {
    case '{': return parse_container(ps, 1);
    case '[': return parse_container(ps, 0);
    case '"': {
        size_t n;
        const char *s = parse_string(ps, &n);
        if (!s) return NULL;
        jv *v = new_value(ps, JV_STR);
        if (!v) return NULL;
        v->s = s;
        v->n = (uint32_t)n;
        return v;
    }
    case 't': if (lit(ps, "true", 4)) return fail(ps, "bad literal"); return new_value(ps, JV_TRUE);
    case 'f': if (lit(ps, "false", 5)) return fail(ps, "bad literal"); return new_value(ps, JV_FALSE);
    case 'n': if (lit(ps, "null", 4)) return fail(ps, "bad literal"); return new_value(ps, JV_NULL);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return parse_number(ps);
        return fail(ps, "unexpected character");
    }
}

static jv *parse_document(parser *ps)
{
    if (ps->err) {
        ps->err->offset = 0;
        ps->err->what = NULL;
    }
    if (!ps->s) return fail(ps, "no input");
    jv *v = parse_value(ps);
    if (!v) return NULL;
    skip_ws(ps);
    if (ps->p != ps->end) return fail(ps, "trailing characters");
    return v;
}

jv *json_parse_inplace(json_arena *a, char *s, size_t n, json_error *err)
{
    const unsigned char *u = (const unsigned char *)s;
    parser ps = {.s = u, .p = u, .end = u + n, .a = a, .err = err, .inplace = (unsigned char *)s};
    return parse_document(&ps);
}

/* ---- keys to slots --------------------------------------------------------- */

/* A key as two words that, with its length, are the key itself when it
 * is at most 16 bytes long: overlapping loads of its first and last
 * bytes (8 and 8, 4 and 4, 2 and 2, or the one byte). */
static inline void key_words(const char *k, size_t n, uint64_t *head, uint64_t *tail)
{
    if (n >= 8) {
        memcpy(head, k, 8);
        memcpy(tail, k + n - 8, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, k, 4);
        memcpy(&b, k + n - 4, 4);
        *head = (uint64_t)a | (uint64_t)b << 32;
        *tail = 0;
    } else if (n >= 2) {
        uint16_t a, b;
        memcpy(&a, k, 2);
        memcpy(&b, k + n - 2, 2);
        *head = (uint64_t)a | (uint64_t)b << 16;
        *tail = 0;
    } else {
        *head = n ? (unsigned char)k[0] : 0;
        *tail = 0;
    }
}

static inline size_t key_hash(uint64_t head, uint64_t tail, size_t n, int where)
{
    uint64_t h = (head ^ (tail * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)n << 56) ^ (uint64_t)where) * 0xBF58476D1CE4E5B9ull;
    return (size_t)(h >> 40) & (JSON_KEYSET_SIZE - 1);
}

/* The middle of a key longer than 16 bytes: one more word up to 24. */
static inline int key_rest(const json_keyent *e, const char *k, size_t n)
{
    uint64_t mid;
    memcpy(&mid, k + 8, 8);
    return n <= 24 ? mid == e->mid : memcmp(e->key + 8, k + 8, n - 16) == 0;
}

int json_keyset_add(json_keyset *ks, int where, const char *k, int slot)
{
    size_t n = strlen(k), used = 0;
    for (size_t i = 0; i < JSON_KEYSET_SIZE; i++) used += ks->e[i].n != 0;
    if (!n || n > UINT16_MAX || where < 0 || where > 255 || slot < 1 || slot > 255 || 2 * (used + 1) > JSON_KEYSET_SIZE)
        return -1;
    uint64_t head, tail, mid = 0;
    key_words(k, n, &head, &tail);
    if (n > 16) memcpy(&mid, k + 8, 8);
    size_t i = key_hash(head, tail, n, where);
    while (ks->e[i].n) i = (i + 1) & (JSON_KEYSET_SIZE - 1);
    ks->e[i] = (json_keyent){head, mid, tail, (uint16_t)n, (uint8_t)where, (uint8_t)slot, k};
    return 0;
}

static inline __attribute__((always_inline)) int keyset_find(const json_keyset *ks, int where, const char *k,
                                                             size_t n)
{
    uint64_t head, tail;
    key_words(k, n, &head, &tail);
    for (size_t i = key_hash(head, tail, n, where);; i = (i + 1) & (JSON_KEYSET_SIZE - 1)) {
        const json_keyent *e = &ks->e[i];
        if (!e->n) return 0;
        if (e->n == n && e->head == head && e->tail == tail && e->where == where && (n <= 16 || key_rest(e, k, n)))
            return e->slot;
    }
}

int json_keyset_find(const json_keyset *ks, int where, const char *k, size_t n)
{
    return keyset_find(ks, where, k, n);
}

/* ---- json_parse_keep's fast path ----------------------------------------
 *
 * Lines as tally and most producers write them (plain ASCII keys, kept
 * members that are objects or scalars) are read by one loop per object
 * over a local pointer, without the general parser's per-value calls.
 * It checks what the general parser checks, in the same way (strings by
 * the same code where they are not plain ASCII); at anything else -- an
 * error, an escape in a key, a kept array, a deep document -- it gives up
 * and the general parser reads the document from its start, so that errors
 * and their offsets are the general parser's.  Kept strings are
 * terminated in place only once the document is accepted, so that the
 * general parser can read the bytes again. */
#define FAST_TERMS 256
/* The fast path's small steps, inlined into its loops: as calls they
 * cost as much as the work they do. */
#define FAST_STEP static inline __attribute__((always_inline))

typedef struct fast {
    parser *ps;
    const unsigned char *end;
    unsigned char *buf;               /* the writable document */
    size_t nterm;
    unsigned char *term[FAST_TERMS];  /* closing quotes of kept strings and keys */
} fast;

#define WS(c) ((c) == ' ' || (c) == '\t' || (c) == '\n' || (c) == '\r')

static inline const unsigned char *fast_ws(const unsigned char *p, const unsigned char *end)
{
    while (p < end && *p <= ' ' && WS(*p)) p++; /* (one test for the usual byte: not blank) */
    return p;
}

/* A kept plain string [p, q) (q: its closing quote): its bytes terminated
 * in place once the document is accepted, or copied (keep->copy). */
FAST_STEP const char *fast_keep(fast *f, const unsigned char *p, const unsigned char *q)
{
    if (f->ps->keep->copy) {
        char *c = arena_alloc(f->ps->a, (size_t)(q - p) + 1);
        if (!c) return NULL;
        memcpy(c, p, (size_t)(q - p));
        c[q - p] = 0;
        return c;
    }
    if (f->nterm == FAST_TERMS) return NULL;
    f->term[f->nterm++] = f->buf + (q - f->ps->s);
    return (const char *)p;
}

static const unsigned char *slow_string(fast *f, const unsigned char *p, int keep, const char **s, size_t *n);

/* A string at p (its opening quote): the position after it, NULL to give
 * up.  *s, *n: its bytes (kept ones are terminated once accepted). */
FAST_STEP const unsigned char *fast_string(fast *f, const unsigned char *p, int keep, const char **s, size_t *n)
{
    const unsigned char *q = plain_run(p + 1, f->end);
    if (q < f->end && *q == '"') {
        *s = (const char *)p + 1;
        *n = (size_t)(q - p - 1);
        if (keep && !(*s = fast_keep(f, p + 1, q))) return NULL;
        return q + 1;
    }
    return slow_string(f, p, keep, s, n);
}

/* Escapes or UTF-8: the general reader (which copies kept ones). */
static const unsigned char *slow_string(fast *f, const unsigned char *p, int keep, const char **s, size_t *n)
{
    parser *ps = f->ps;
    ps->p = p;
    ps->skip = !keep;
    *s = parse_string(ps, n);
    ps->skip = 0;
    return *s ? ps->p : NULL;
}

/* A value not kept, at p (not whitespace), checked: the position after
 * it, or NULL.  Containers by a stack of bits (1: object) to `room` more
 * levels. */
static const unsigned char *fast_skip(fast *f, const unsigned char *p, int room)
{
    const unsigned char *end = f->end;
    uint64_t stack = 0;
    int depth = 0;
    const char *s;
    const unsigned char *bad;
    size_t n;
    int is_int;
    for (;;) {
        /* a value */
        switch (*p) {
        case '"': if (!(p = fast_string(f, p, 0, &s, &n))) return NULL; break;
        case 't': if (!(p = literal(p, end, "true", 4))) return NULL; break;
        case 'f': if (!(p = literal(p, end, "false", 5))) return NULL; break;
        case 'n': if (!(p = literal(p, end, "null", 4))) return NULL; break;
        case '{':
        case '[': {
            int obj = *p == '{';
            if (depth == room || depth == 64) return NULL;
            stack = stack << 1 | (uint64_t)obj;
            depth++;
            p = fast_ws(p + 1, end);
            if (p >= end) return NULL;
            if (*p == (obj ? '}' : ']')) {
                p++;
                stack >>= 1;
                depth--;
                break;
            }
            if (obj) goto key;
            continue;
        }
        default:
            if (!(p = scan_number(p, end, &is_int, &bad))) return NULL;
            break;
        }
        /* after a value: the end of its containers, or the next one */
        for (;;) {
            if (!depth) return p;
            p = fast_ws(p, end);
            if (p >= end) return NULL;
            int obj = (int)(stack & 1);
            if (*p == (obj ? '}' : ']')) {
                p++;
                stack >>= 1;
                depth--;
                continue;
            }
            if (*p != ',') return NULL;
            p = fast_ws(p + 1, end);
            if (p >= end) return NULL;
            if (!obj) break;
        key:
            if (*p != '"' || !(p = fast_string(f, p, 0, &s, &n))) return NULL;
            p = fast_ws(p, end);
            if (p >= end || *p != ':') return NULL;
            p = fast_ws(p + 1, end);
            if (p >= end) return NULL;
            break;
        }
    }
}

FAST_STEP jv *fast_node(fast *f, jv_type t, const unsigned char *key, size_t keylen)
{
    jv *v = arena_alloc(f->ps->a, sizeof *v);
    if (!v) return NULL;
    *v = (jv){.type = (uint8_t)t, .key = (const char *)key, .keylen = (uint32_t)keylen};
    return v;
}

/* The object at p ('{'), whose members are asked about at `depth` in
 * `pslot`, into obj: the position after it, or NULL. */
static const unsigned char *fast_object(fast *f, const unsigned char *p, int depth, int pslot, jv *obj)
{
    const unsigned char *end = f->end;
    const json_keep *k = f->ps->keep;
    const json_keyset *ks = k->keys;
    const jv **slots = k->slots;
    int where = ks ? k->where(depth, pslot) : 0;
    jv **tail = &obj->child;
    p = fast_ws(p + 1, end);
    if (p >= end) return NULL;
    if (*p == '}') return p + 1;
    for (;;) {
        /* the key: plain ASCII only here */
        if (*p != '"') return NULL;
        const unsigned char *key = p + 1, *q = plain_run(key, end);
        if (q >= end || *q != '"') return NULL;
        size_t keylen = (size_t)(q - key);
        p = fast_ws(q + 1, end);
        if (p >= end || *p != ':') return NULL;
        p = fast_ws(p + 1, end);
        if (p >= end) return NULL;
        int slot;
        if (!ks) slot = k->want(k->ud, depth, pslot, (const char *)key, keylen);
        else if ((slot = where < 0 ? 0 : keyset_find(ks, where, (const char *)key, keylen)) && slots[slot]) slot = 0;
        if (!slot) {
            if (!(p = fast_skip(f, p, JSON_MAX_DEPTH - depth))) return NULL;
        } else {
            if (!(key = (const unsigned char *)fast_keep(f, key, q))) return NULL;
            jv *e;
            int is_int;
            const unsigned char *v0 = p, *bad;
            switch (*p) {
            case '"': {
                const char *str;
                size_t n;
                if (!(p = fast_string(f, p, 1, &str, &n)) || !(e = fast_node(f, JV_STR, key, keylen))) return NULL;
                e->s = str;
                e->n = (uint32_t)n;
                break;
            }
            case '{':
                if (depth + 1 > JSON_MAX_DEPTH || !(e = fast_node(f, JV_OBJ, key, keylen)) ||
                    !(p = fast_object(f, p, depth + 1, slot, e)))
                    return NULL;
                break;
            case 't': if (!(p = literal(p, end, "true", 4)) || !(e = fast_node(f, JV_TRUE, key, keylen))) return NULL; break;
            case 'f': if (!(p = literal(p, end, "false", 5)) || !(e = fast_node(f, JV_FALSE, key, keylen))) return NULL; break;
            case 'n': if (!(p = literal(p, end, "null", 4)) || !(e = fast_node(f, JV_NULL, key, keylen))) return NULL; break;
            case '[': return NULL; /* a kept array: every element built, by the general parser */
            default:
                if (!(p = scan_number(p, end, &is_int, &bad)) || !(e = fast_node(f, JV_NUM, key, keylen))) return NULL;
                e->s = (const char *)v0;
                e->n = (uint32_t)(p - v0);
                e->is_int = (uint8_t)is_int;
                break;
            }
            *tail = e;
            tail = &e->next;
            obj->count++;
            if (ks) slots[slot] = e;
            else k->got(k->ud, slot, e);
        }
        p = fast_ws(p, end);
        if (p >= end) return NULL;
        if (*p == '}') return p + 1;
        if (*p != ',') return NULL;
        p = fast_ws(p + 1, end);
        if (p >= end) return NULL;
    }
}

jv *json_parse_keep(json_arena *a, char *s, size_t n, const json_keep *keep, json_error *err)
{
    const unsigned char *u = (const unsigned char *)s;
    parser ps = {.s = u, .p = u, .end = u + n, .a = a, .err = err, .keep = keep};
    if (err) {
        err->offset = 0;
        err->what = NULL;
    }
    /* (ps.inplace stays NULL: strings fast_string hands to the general
     * reader are copied, the buffer is written only once accepted) */
    fast f; /* (not zero-filled: term[] is written before it is read) */
    f.ps = &ps;
    f.end = u + n;
    f.buf = (unsigned char *)s;
    f.nterm = 0;
    const unsigned char *p = fast_ws(u, u + n);
    jv *root;
    if (p < f.end && *p == '{' && (root = fast_node(&f, JV_OBJ, NULL, 0)) && (p = fast_object(&f, p, 1, 0, root)) &&
        fast_ws(p, f.end) == f.end) {
        for (size_t i = 0; i < f.nterm; i++) *f.term[i] = 0;
        return root;
    }
    /* anything else: the general parser, from the start (keep's consumer
     * told to forget what it was given) */
    if (keep->reset) keep->reset(keep->ud);
    if (err) {
        err->offset = 0;
        err->what = NULL;
    }
    parser gp = {.s = u, .p = u, .end = u + n, .a = a, .err = err, .inplace = keep->copy ? NULL : (unsigned char *)s,
                 .keep = keep};
    return parse_document(&gp);
}

jv *json_parse(json_arena *a, const char *s, size_t n, json_error *err)
{
    const unsigned char *u = (const unsigned char *)s;
    parser ps = {.s = u, .p = u, .end = u + n, .a = a, .err = err};
    return parse_document(&ps);
}

const jv *jv_getn(const jv *obj, const char *key, size_t kl)
{
    if (!obj || obj->type != JV_OBJ || !key) return NULL;
    for (const jv *e = obj->child; e; e = e->next)
        if (e->keylen == kl && e->key[0] == key[0] && memcmp(e->key, key, kl) == 0) return e;
    return NULL;
}

const jv *jv_get(const jv *obj, const char *key) { return key ? jv_getn(obj, key, strlen(key)) : NULL; }

/* An integer's text (no fraction or exponent) into *out; 0 when it does
 * not fit int64. */
static int int_text(const char *s, size_t n, int64_t *out)
{
    int neg = n && *s == '-';
    if (n - (size_t)neg > 19) return 0;
    uint64_t u = digits_value((const unsigned char *)s + neg, n - (size_t)neg);
    if (u > (uint64_t)INT64_MAX + (uint64_t)neg) return 0;
    *out = neg ? (int64_t)(0 - u) : (int64_t)u;
    return 1;
}

double jv_num(const jv *v, double def)
{
    if (!v || v->type != JV_NUM) return def;
    int64_t i;
    if (v->is_int && int_text(v->s, v->n, &i)) /* int64 to double rounds as strtod does */
        return i == 0 && v->s[0] == '-' ? -0.0 : (double)i;
    double d;
    const unsigned char *s = (const unsigned char *)v->s;
    if (fast_decimal(s, s + v->n, &d)) return d;
    char tmp[64];
    if (v->n < sizeof tmp) {
        memcpy(tmp, v->s, v->n);
        tmp[v->n] = 0;
        return strtod(tmp, NULL);
    }
    char *t = malloc((size_t)v->n + 1);
    if (!t) return def;
    memcpy(t, v->s, v->n);
    t[v->n] = 0;
    d = strtod(t, NULL);
    free(t);
    return d;
}

int64_t jv_int(const jv *v, int64_t def)
{
    if (!v || v->type != JV_NUM) return def;
    int64_t i;
    if (v->is_int && int_text(v->s, v->n, &i)) return i;
    double d = jv_num(v, def);
    if (d >= -9.2e18 && d <= 9.2e18) return (int64_t)d;
    return def;
}

const char *jv_str(const jv *v)
{
    return v && v->type == JV_STR ? v->s : NULL;
}

void jv_write(buf *b, const jv *v)
{
    switch (v->type) {
    case JV_NULL: buf_put(b, "null", 4); break;
    case JV_TRUE: buf_put(b, "true", 4); break;
    case JV_FALSE: buf_put(b, "false", 5); break;
    case JV_NUM: buf_put(b, v->s, v->n); break;
    case JV_STR: enc_str(b, v->s, v->n); break;
    case JV_ARR:
    case JV_OBJ:
        buf_putc(b, v->type == JV_OBJ ? '{' : '[');
        for (const jv *e = v->child; e; e = e->next) {
            if (e != v->child) buf_putc(b, ',');
            if (v->type == JV_OBJ) {
                enc_str(b, e->key, e->keylen);
                buf_putc(b, ':');
            }
            jv_write(b, e);
        }
        buf_putc(b, v->type == JV_OBJ ? '}' : ']');
        break;
    }
}
