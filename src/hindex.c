/* hindex -- see hindex.h. */
#include "hindex.h"

#include <stdlib.h>

int hindex_grow(hindex *x, size_t n, uint64_t (*hash_of)(const void *ud, size_t i), const void *ud)
{
    size_t ns = x->nslot ? x->nslot * 2 : 64;
    size_t *sl = malloc(ns * sizeof *sl);
    if (!sl) return -1;
    for (size_t i = 0; i < ns; i++) sl[i] = HINDEX_FREE;
    for (size_t i = 0; i < n; i++) {
        size_t h = (size_t)hash_of(ud, i) & (ns - 1);
        while (sl[h] != HINDEX_FREE) h = (h + 1) & (ns - 1);
        sl[h] = i;
    }
    free(x->slot);
    x->slot = sl;
    x->nslot = ns;
    return 0;
}

void hindex_clear(hindex *x)
{
    for (size_t i = 0; i < x->nslot; i++) x->slot[i] = HINDEX_FREE;
}

void hindex_free(hindex *x)
{
    free(x->slot);
    x->slot = NULL;
    x->nslot = 0;
}
