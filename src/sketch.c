/* sketch -- see sketch.h. */
#include "sketch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double gamma_, log_gamma;

static void init_consts(void)
{
    if (log_gamma == 0) {
        gamma_ = (1 + SKETCH_ALPHA) / (1 - SKETCH_ALPHA);
        log_gamma = log(gamma_);
    }
}

void sketch_init(sketch *s)
{
    memset(s, 0, sizeof *s);
    s->min = INFINITY;
    s->max = -INFINITY;
}

void sketch_free(sketch *s)
{
    free(s->counts);
    sketch_init(s);
}

static int ensure(sketch *s)
{
    if (s->counts) return 0;
    s->counts = calloc(SKETCH_BUCKETS, sizeof *s->counts);
    return s->counts ? 0 : -1;
}

int sketch_add(sketch *s, double v)
{
    if (v != v) return 0;
    init_consts();
    if (ensure(s)) return -1;
    s->n++;
    s->sum += v;
    if (v < s->min) s->min = v;
    if (v > s->max) s->max = v;
    if (v < 1) {
        s->low++;
        return 0;
    }
    int i = (int)ceil(log(v) / log_gamma);
    if (i < 0) i = 0;
    if (i >= SKETCH_BUCKETS) i = SKETCH_BUCKETS - 1;
    s->counts[i]++;
    return 0;
}

int sketch_merge(sketch *into, const sketch *from)
{
    if (!from->n) return 0;
    if (ensure(into)) return -1;
    into->n += from->n;
    into->low += from->low;
    into->sum += from->sum;
    if (from->min < into->min) into->min = from->min;
    if (from->max > into->max) into->max = from->max;
    for (int i = 0; i < SKETCH_BUCKETS; i++) into->counts[i] += from->counts[i];
    return 0;
}

double sketch_quantile(const sketch *s, double q)
{
    if (!s->n) return NAN;
    init_consts();
    if (q <= 0) return s->min;
    if (q >= 1) return s->max;
    /* The value of rank floor(q * (n - 1)), 0-based: the lower of the two
     * order statistics an exact interpolated quantile sits between. */
    uint64_t rank = (uint64_t)floor(q * (double)(s->n - 1));
    if (rank < s->low) return s->min;
    uint64_t seen = s->low;
    for (int i = 0; i < SKETCH_BUCKETS; i++) {
        seen += s->counts[i];
        if (seen > rank) {
            double v = 2 * pow(gamma_, i) / (gamma_ + 1);
            if (v < s->min) v = s->min;
            if (v > s->max) v = s->max;
            return v;
        }
    }
    return s->max;
}
