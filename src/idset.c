/* idset -- see idset.h. */
#include "idset.h"

#include <stdlib.h>
#include <string.h>

#include "hash.h"

void idset_init(idset *s) { memset(s, 0, sizeof *s); }

void idset_free(idset *s)
{
    free(s->slot);
    memset(s, 0, sizeof *s);
}

static void put(uint64_t *slot, size_t cap, uint64_t h)
{
    size_t i = (size_t)h & (cap - 1);
    while (slot[i]) i = (i + 1) & (cap - 1);
    slot[i] = h;
}

static int grow_to(idset *s, size_t nc)
{
    if (nc > IDSET_MAX * 2) return -1;
    uint64_t *ns = calloc(nc, sizeof *ns);
    if (!ns) return -1;
    for (size_t i = 0; i < s->cap; i++)
        if (s->slot[i]) put(ns, nc, s->slot[i]);
    free(s->slot);
    s->slot = ns;
    s->cap = nc;
    return 0;
}

static int grow(idset *s) { return grow_to(s, s->cap ? s->cap * 2 : 4096); }

int idset_reserve(idset *s, size_t n)
{
    size_t nc = s->cap ? s->cap : 4096;
    while (nc < 2 * n && nc <= IDSET_MAX) nc *= 2;
    return nc == s->cap ? 0 : grow_to(s, nc);
}

void idset_clear(idset *s)
{
    if (s->slot) memset(s->slot, 0, s->cap * sizeof *s->slot);
    s->n = 0;
    s->full = 0;
}

int idset_add(idset *s, const char *id, size_t n)
{
    uint64_t h = hash_mem(id, n);
    if (!h) h = 1;
    if (s->cap) {
        for (size_t i = (size_t)h & (s->cap - 1); s->slot[i]; i = (i + 1) & (s->cap - 1))
            if (s->slot[i] == h) return 0;
    }
    if (s->full) return -1;
    if ((s->n + 1) * 2 > s->cap && grow(s)) {
        s->full = 1;
        return -1;
    }
    put(s->slot, s->cap, h);
    s->n++;
    return 1;
}
