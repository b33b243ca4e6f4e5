/*
 * hindex -- the one hash index tally uses: open addressing with linear
 * probing over an array of entries the caller owns, keyed by each entry's
 * 64-bit hash (hash.h).  A slot holds an entry's index, or HINDEX_FREE.
 * Kept at most half full, so a probe is short.
 *
 *   if (hindex_fit(&x, n, hash_of, entries)) ...out of memory...
 *   size_t i = hindex_first(&x, h);
 *   for (; x.slot[i] != HINDEX_FREE; i = hindex_next(&x, i))
 *       if (matches(entries[x.slot[i]])) return entries[x.slot[i]];
 *   x.slot[i] = n;   entries[n++] = new_entry;
 *
 * Used by `tally stats`' groups and the rollup's cells.
 */
#ifndef TALLY_HINDEX_H
#define TALLY_HINDEX_H

#include <stddef.h>
#include <stdint.h>

#define HINDEX_FREE SIZE_MAX

typedef struct hindex {
    size_t *slot;
    size_t nslot;    /* a power of two, or 0 */
} hindex;

/* Makes room for entry number n (entries 0..n-1 exist; hash_of(ud, i) is
 * entry i's hash), doubling and re-placing them when half full.  0, or -1
 * when memory ran out (the index is unchanged). */
int hindex_grow(hindex *x, size_t n, uint64_t (*hash_of)(const void *ud, size_t i), const void *ud);
static inline int hindex_fit(hindex *x, size_t n, uint64_t (*hash_of)(const void *ud, size_t i), const void *ud)
{
    return (n + 1) * 2 <= x->nslot ? 0 : hindex_grow(x, n, hash_of, ud); /* once per row: the check inline */
}
void hindex_clear(hindex *x);   /* every slot free, memory kept */
void hindex_free(hindex *x);

static inline size_t hindex_first(const hindex *x, uint64_t h) { return (size_t)h & (x->nslot - 1); }
static inline size_t hindex_next(const hindex *x, size_t i) { return (i + 1) & (x->nslot - 1); }

#endif
