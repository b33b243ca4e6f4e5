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
 * is kept).  Memory is bounded (at most SKETCH_BUCKETS counters) whatever
 * the input size; two sketches merge by adding counts, so files, workers
 * and the database's per-minute rollup merge without losing the bound.
 *
 * A value's bucket comes from a table indexed by its binary exponent and
 * top mantissa bits (no logarithm per value); the table is built from the
 * same boundaries g^i, so the buckets are exactly the ones above.
 */
#ifndef TALLY_SKETCH_H
#define TALLY_SKETCH_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define SKETCH_ALPHA 0.005
#define SKETCH_MAX_VALUE 3.6e9
#define SKETCH_BUCKETS 2208

typedef struct sketch {
    uint64_t n, low;          /* all values; values below 1 */
    double min, max, sum;
    /* Bucket i's count is win[i - base] for base <= i < base + cap; the
     * window grows to cover the buckets used, so a group whose values
     * span a decade costs 2 KiB, not the 17 KiB of every bucket. */
    uint64_t *win;
    int base, cap;
    int lo, hi;               /* buckets outside [lo, hi] are zero; lo > hi: none */
} sketch;

void sketch_init(sketch *s);
void sketch_free(sketch *s);
/* Empties s and keeps its array (clearing only what was used). */
void sketch_reset(sketch *s);
/* Returns -1 only when the bucket window cannot be allocated. */
int sketch_add(sketch *s, double v);
/* n values v at once (a histogram read from elsewhere, bucket by bucket). */
int sketch_add_n(sketch *s, double v, uint64_t n);
int sketch_merge(sketch *into, const sketch *from);
/* q in [0,1]; NAN when empty. */
double sketch_quantile(const sketch *s, double q);

/* Compact bytes: counts, extremes and the used buckets as varints. */
void sketch_encode(const sketch *s, buf *b);
/* Reads one encoded sketch from p[0..n) and merges it into s.  Returns the
 * bytes read, or -1 when they are not a sketch (s is then unchanged). */
long sketch_decode_merge(sketch *s, const unsigned char *p, size_t n);

/* Little-endian varints and doubles, shared with the rollup's cells. */
/* Writes v's varint (at most 10 bytes) at o; returns the byte after it. */
static inline unsigned char *uvarint_at(unsigned char *o, uint64_t v)
{
    while (v >= 0x80) {
        *o++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *o++ = (unsigned char)v;
    return o;
}
void put_uvarint(buf *b, uint64_t v);
void put_f64(buf *b, double v);
/* Each returns 0, or -1 when p[*at..n) is too short or malformed. */
int get_uvarint(const unsigned char *p, size_t n, size_t *at, uint64_t *out);
int get_f64(const unsigned char *p, size_t n, size_t *at, double *out);

#endif
