/*
 * idset -- which event ids have been seen, so that the same event read
 * from two sources (a run directory and the database imported from it)
 * counts once.
 *
 * Keeps the 64-bit hash of each id (open addressing, linear probing), 8
 * bytes an event.  Two different ids with the same hash would count as
 * one: with 10 million events the chance that any pair does is about 3 in
 * a million.  Capped at IDSET_MAX ids; past it ids are no longer
 * remembered and idset_add() says so.
 */
#ifndef TALLY_IDSET_H
#define TALLY_IDSET_H

#include <stddef.h>
#include <stdint.h>

#define IDSET_MAX ((size_t)1 << 26)   /* 64 M ids, 1 GiB of slots at most */

typedef struct idset {
    uint64_t *slot;    /* 0 = empty */
    size_t cap, n;
    int full;          /* the cap (or memory) was reached */
} idset;

void idset_init(idset *s);
void idset_free(idset *s);
/* 1 when the id is new (now remembered), 0 when it was seen before, -1
 * when it could not be remembered (full: treat it as new). */
int idset_add(idset *s, const char *id, size_t n);
/* Room for n ids without growing (0, or -1 out of memory); forgetting
 * every id while keeping the room. */
int idset_reserve(idset *s, size_t n);
void idset_clear(idset *s);

#endif
