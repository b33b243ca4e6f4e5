/*
 * writer_enrich -- what the writer adds to a request before the sinks see
 * it: its cost from the price table, and its share of the energy used
 * while it was in flight.  The record (which the writer owns until it
 * moves the ring's tail) is updated in place, so every sink agrees.
 */
#include <string.h>

#include "energy.h"
#include "internal.h"
#include "record.h"

/* A request recorded without a cost is costed here, off the caller's
 * thread, at the price in effect at its time; the record (which the writer
 * owns until it moves the ring's tail) is updated in place so that every
 * sink sees the same cost.  No price: no cost, and counted as unpriced. */
static void price_request(struct tally *h, rec_request *q, int64_t ts_us)
{
    if (q->flags & TALLY_HAS_COST) return;
    char model[256];
    size_t n = q->s[RQ_MODEL].len < sizeof model - 1 ? q->s[RQ_MODEL].len : sizeof model - 1;
    memcpy(model, (const char *)q + q->s[RQ_MODEL].off, n);
    model[n] = 0;
    cost c;
    if (h->prices.n && q->s[RQ_MODEL].off &&
        prices_cost(&h->prices, model, (double)ts_us / 1e6, q->prompt, q->cached, q->cache_write, q->completion,
                    q->reasoning, &c) == 0) {
        q->cost = c.total;
        q->cost_input = c.input;
        q->cost_cached = c.cached;
        q->cost_cache_write = c.cache_write;
        q->cost_output = c.output;
        q->cost_reasoning = c.reasoning;
        q->flags |= TALLY_HAS_COST;
    } else {
        ring_bump(&h->unpriced, 1);
    }
}

/* The request's share of the energy used while it was in flight, unless
 * the caller gave its own. */
static void attribute_energy(struct tally *h, rec_request *q)
{
    if (!h->energy || !q->end_ns) return;
    if (!(q->flags & TALLY_HAS_ENERGY)) {
        double j = energy_of(h->energy, q->device, q->begin_ns, q->end_ns);
        if (j >= 0) {
            q->energy_j = j;
            q->flags |= TALLY_HAS_ENERGY;
        }
    }
    if (!(q->flags & TALLY_HAS_GPU_UTIL)) {
        double u = energy_util(h->energy, q->device);
        if (u == u) {
            q->gpu_util = u;
            q->flags |= TALLY_HAS_GPU_UTIL;
        }
    }
}

void tally__enrich_request(struct tally *h, rec_request *q, int64_t ts_us)
{
    price_request(h, q, ts_us);
    attribute_energy(h, q);
}
