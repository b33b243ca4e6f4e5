/*
 * buf -- a growable byte buffer with a hard cap.
 *
 * Every buffer in tally that grows has a cap: buf_reserve() fails (returns
 * -1) rather than grow past it, and the caller decides what to count as
 * lost.  Appends after a failure are no-ops until buf_reset(), so a caller
 * can append a whole line and check `failed` once at the end.
 */
#ifndef TALLY_BUF_H
#define TALLY_BUF_H

#include <stddef.h>
#include <string.h>

typedef struct buf {
    char *p;
    size_t len, cap, max;
    int failed;
} buf;

void buf_init(buf *b, size_t max);
void buf_free(buf *b);
int buf_grow(buf *b, size_t need);

static inline void buf_reset(buf *b) { b->len = 0; b->failed = 0; }

/* Makes room for n more bytes; -1 (and `failed`) when over the cap. */
static inline int buf_reserve(buf *b, size_t n)
{
    if (b->failed) return -1;
    if (b->cap - b->len >= n) return 0;
    return buf_grow(b, n);
}

static inline void buf_put(buf *b, const void *s, size_t n)
{
    if (buf_reserve(b, n) == 0) {
        memcpy(b->p + b->len, s, n);
        b->len += n;
    }
}

static inline void buf_putc(buf *b, char c)
{
    if (buf_reserve(b, 1) == 0) b->p[b->len++] = c;
}

static inline void buf_puts(buf *b, const char *s) { buf_put(b, s, strlen(s)); }

#endif
