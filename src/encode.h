/*
 * encode -- the JSON encoder every tally writer uses.
 *
 * Promises: output is valid UTF-8 JSON on one line.  Control characters,
 * quote and backslash are escaped; U+2028 and U+2029 are escaped too (they
 * end lines in JavaScript); invalid UTF-8 is replaced by U+FFFD, never
 * copied; NaN and infinities are written `null`.  Doubles are written in
 * the shortest of %.15g / %.16g / %.17g that reads back to the same value.
 */
#ifndef TALLY_ENCODE_H
#define TALLY_ENCODE_H

#include <stdint.h>
#include <time.h>

#include "buf.h"

/* "s" escaped and quoted.  Returns 1 when something had to be repaired. */
int enc_str(buf *b, const char *s, size_t n);
static inline int enc_cstr(buf *b, const char *s)
{
    return enc_str(b, s ? s : "", s ? strlen(s) : 0);
}

void enc_i64(buf *b, int64_t v);
void enc_double(buf *b, double v);
/* A member after others: `,"key":v` (key is a literal name, not escaped). */
static inline void enc_member_i64(buf *b, const char *key, int64_t v)
{
    buf_putc(b, ',');
    buf_putc(b, '"');
    buf_puts(b, key);
    buf_puts(b, "\":");
    enc_i64(b, v);
}
static inline void enc_member_double(buf *b, const char *key, double v)
{
    buf_putc(b, ',');
    buf_putc(b, '"');
    buf_puts(b, key);
    buf_puts(b, "\":");
    enc_double(b, v);
}
/* An integer count of microseconds as seconds with 6 decimals. */
void enc_us_as_seconds(buf *b, int64_t us);
/* 2026-11-23T11:14:25Z */
void enc_iso8601(buf *b, time_t sec);

/* The reverse: ISO-8601 UTC ("2026-11-23", "2026-11-23T11:14:25Z", with
 * a fraction or an offset) to Unix seconds.  0, or -1 when it is not one. */
int iso8601_parse(const char *s, double *out);

/* `"key":` for a literal key that needs no escaping. */
#define ENC_KEY(b, lit) buf_put((b), "\"" lit "\":", sizeof(lit) + 2)
/* `,"key":` */
#define ENC_NKEY(b, lit) buf_put((b), ",\"" lit "\":", sizeof(lit) + 3)

/* Length of the longest prefix of s[0..n) that does not split a UTF-8
 * sequence, used to cut over-long strings at a character boundary. */
size_t utf8_cut(const char *s, size_t n);

#endif
