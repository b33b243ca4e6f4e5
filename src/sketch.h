/*
 * sketch -- a mergeable quantile sketch with bounded relative error.
 *
 * Logarithmic buckets (DDSketch's idea): bucket i holds the values in
 * (g^(i-1), g^i] with g = (1+a)/(1-a), and a quantile is answered with
 * 2 g^i / (g+1), which is within a = 0.5% of every value in the bucket.
 * So a reported quantile is within 0.5% of a value whose rank is the
 * requested one -- within 1% of the exact quantile, the promise tally
 * documents -- for values from 1 to 3.6e9 (1 us to 1 h when values are
 * microseconds).  Values below 1 share one bucket (reported as the exact
 * minimum); values above the range share the top bucket (the exact maximum
 * is kept).  Memory is one fixed array per sketch, whatever the input
 * size; two sketches merge by adding counts, so files and workers merge.
 */
#ifndef TALLY_SKETCH_H
#define TALLY_SKETCH_H

#include <stdint.h>

#define SKETCH_ALPHA 0.005
#define SKETCH_MAX_VALUE 3.6e9
#define SKETCH_BUCKETS 2208

typedef struct sketch {
    uint64_t n, low;          /* all values; values below 1 */
    double min, max, sum;
    uint64_t *counts;         /* SKETCH_BUCKETS, allocated on first add */
} sketch;

void sketch_init(sketch *s);
void sketch_free(sketch *s);
/* Returns -1 only when the bucket array cannot be allocated. */
int sketch_add(sketch *s, double v);
int sketch_merge(sketch *into, const sketch *from);
/* q in [0,1]; NAN when empty. */
double sketch_quantile(const sketch *s, double q);

#endif
