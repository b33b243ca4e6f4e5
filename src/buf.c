/* buf -- see buf.h. */
#include "buf.h"

#include <stdlib.h>

void buf_init(buf *b, size_t max)
{
    b->p = NULL;
    b->len = b->cap = 0;
    b->max = max;
    b->failed = 0;
}

void buf_free(buf *b)
{
    free(b->p);
    buf_init(b, b->max);
}

int buf_grow(buf *b, size_t need)
{
    if (b->len + need > b->max || b->len + need < b->len) {
        b->failed = 1;
        return -1;
    }
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap - b->len < need) ncap *= 2;
    if (ncap > b->max) ncap = b->max;
    char *np = realloc(b->p, ncap);
    if (!np) {
        b->failed = 1;
        return -1;
    }
    b->p = np;
    b->cap = ncap;
    return 0;
}
