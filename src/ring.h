/*
 * ring -- a bounded single-producer / single-consumer byte ring.
 *
 * One ring per (recording thread, handle).  The owning thread is the only
 * producer; the writer thread is the only consumer.  Records are variable
 * length, 8-byte aligned, and never split across the end of the buffer: a
 * record that would not fit before the end is preceded by a padding record.
 *
 * The producer touches only its own cache line on the fast path: it keeps
 * a cached copy of the consumer's position and re-reads the real one only
 * when the cached view says the ring is full.  A full ring drops the record
 * (the caller counts it); nothing here blocks or allocates.
 */
#ifndef TALLY_RING_H
#define TALLY_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define RING_ALIGN 8

typedef struct rec_hdr {
    uint32_t len;        /* whole record, header included, multiple of 8 */
    uint16_t type;       /* REC_* (0 = padding) */
    uint16_t flags;
    int64_t mono_ns;     /* CLOCK_MONOTONIC at record time */
} rec_hdr;

/* The counters a ring keeps for its producer, listed once: the ring's
 * fields, resetting them, and summing them (ring_counts_add) derive from
 * this list. */
#define RING_COUNTERS(X) X(offered) X(dropped) X(requests) X(errors) X(tokens_out)

typedef struct ring {
    /* Producer's line. */
    _Alignas(64) _Atomic uint64_t head;   /* bytes published */
    uint64_t tail_cache;
    _Atomic uint64_t seq;                 /* records published */
    uint64_t consumed_cache;
    /* Counters written only by the producer, read by anyone (relaxed). */
#define RING_COUNTER_FIELD(n) _Atomic uint64_t n;
    RING_COUNTERS(RING_COUNTER_FIELD)
#undef RING_COUNTER_FIELD
    /* In a forked child: a copy of `offered` in memory the run's first
     * process can read after the child is gone (NULL elsewhere). */
    _Atomic uint64_t *offered_mirror;

    /* Consumer's line. */
    _Alignas(64) _Atomic uint64_t tail;   /* bytes consumed */
    /* Records committed to the sinks: the producer wakes the writer when
     * seq - consumed_seq reaches the flush count, so it counts what the
     * writer holds uncommitted as well as what is still in the ring. */
    _Atomic uint64_t consumed_seq;
    uint64_t drained;                     /* records drained (writer only) */

    /* Read-only after creation, and list links owned by the handle. */
    _Alignas(64) char *data;
    uint64_t cap, mask;
    _Atomic int refs;                     /* owner thread + handle */
    _Atomic int thread_gone;
    struct ring *next;
} ring;

ring *ring_new(size_t cap);               /* cap rounded up to a power of 2 */
/* Drops one reference; frees at zero. */
void ring_release(ring *r);
/* Empties the ring and zeroes its counters (used in a forked child). */
void ring_reset(ring *r);

static inline uint64_t ring_load(_Atomic uint64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

/* A snapshot of counters, and adding a ring's into it. */
typedef struct ring_counts {
#define RING_COUNT_FIELD(n) uint64_t n;
    RING_COUNTERS(RING_COUNT_FIELD)
#undef RING_COUNT_FIELD
} ring_counts;

static inline void ring_counts_add(ring_counts *c, ring *r)
{
#define RING_COUNT_ADD(n) c->n += ring_load(&r->n);
    RING_COUNTERS(RING_COUNT_ADD)
#undef RING_COUNT_ADD
}
/* Single-writer increment: a plain load and store, no lock prefix. */
static inline void ring_bump(_Atomic uint64_t *v, uint64_t n)
{
    atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

/* Reserves room for a record of `payload` bytes after the header.  Returns
 * the header to fill, or NULL when the ring is full.  Commit with
 * ring_commit(); nothing is visible to the consumer before that. */
static inline rec_hdr *ring_reserve(ring *r, size_t payload, uint64_t *newhead)
{
    uint64_t need = (sizeof(rec_hdr) + payload + RING_ALIGN - 1) & ~(uint64_t)(RING_ALIGN - 1);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t off = head & r->mask;
    uint64_t pad = off + need > r->cap ? r->cap - off : 0;
    uint64_t total = pad + need;
    if (need > r->cap / 2) return NULL;
    if (r->cap - (head - r->tail_cache) < total) {
        r->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (r->cap - (head - r->tail_cache) < total) return NULL;
    }
    if (pad) {
        /* A gap too small for a header is skipped by the consumer as is. */
        rec_hdr *p = (rec_hdr *)(r->data + off);
        if (pad >= sizeof(rec_hdr)) {
            p->len = (uint32_t)pad;
            p->type = 0;
        }
        off = 0;
    }
    rec_hdr *h = (rec_hdr *)(r->data + off);
    h->len = (uint32_t)need;
    h->flags = 0;
    *newhead = head + total;
    return h;
}

static inline void ring_commit(ring *r, uint64_t newhead)
{
    ring_bump(&r->seq, 1);
    atomic_store_explicit(&r->head, newhead, memory_order_release);
}

/* Records published but not yet consumed, as the producer last saw it; the
 * real figure is re-read only when the cached one crosses `threshold`. */
static inline int ring_pending_at_least(ring *r, uint64_t threshold)
{
    uint64_t seq = ring_load(&r->seq);
    if (seq - r->consumed_cache < threshold) return 0;
    r->consumed_cache = atomic_load_explicit(&r->consumed_seq, memory_order_acquire);
    return seq - r->consumed_cache >= threshold;
}

/* More than half the ring in use?  The cached consumer position is
 * refreshed before saying yes, so a stale cache costs one load, not a
 * wake-up per call. */
static inline int ring_half_full(ring *r, uint64_t head)
{
    if (head - r->tail_cache <= r->cap / 2) return 0;
    r->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
    return head - r->tail_cache > r->cap / 2;
}

#endif
