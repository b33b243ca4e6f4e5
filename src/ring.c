/* ring -- see ring.h. */
#include "ring.h"

#include <stdlib.h>
#include <string.h>

ring *ring_new(size_t cap)
{
    uint64_t c = 4096;
    while (c < cap) c <<= 1;
    ring *r = aligned_alloc(64, sizeof *r);
    if (!r) return NULL;
    memset(r, 0, sizeof *r);
    r->data = aligned_alloc(64, c);
    if (!r->data) {
        free(r);
        return NULL;
    }
    /* Touch every page now, on the thread's first event, so that no later
     * record pays for a page fault. */
    memset(r->data, 0, c);
    r->cap = c;
    r->mask = c - 1;
    atomic_init(&r->refs, 2);
    return r;
}

void ring_release(ring *r)
{
    if (!r) return;
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1) {
        free(r->data);
        free(r);
    }
}

void ring_reset(ring *r)
{
    atomic_store(&r->head, 0);
    atomic_store(&r->tail, 0);
    atomic_store(&r->consumed_seq, 0);
    r->drained = 0;
    r->tail_cache = 0;
    atomic_store(&r->seq, 0);
    r->consumed_cache = 0;
#define RING_COUNTER_ZERO(n) atomic_store(&r->n, 0);
    RING_COUNTERS(RING_COUNTER_ZERO)
#undef RING_COUNTER_ZERO
    r->offered_mirror = NULL;
}
