/* sketch -- see sketch.h. */
#include "sketch.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Sub-ranges per octave in the lookup table.  An octave spans ln 2 / ln g
 * = 69.3 buckets, so a sub-range (1/128 of an octave, ratio at most
 * 1 + 1/128 < g) holds at most one bucket boundary. */
#define SUB_BITS 7
#define SUBS (1 << SUB_BITS)
#define OCTAVES 32   /* values from 1 to 2^32 > SKETCH_MAX_VALUE */

static double gamma_;
static double bound[SKETCH_BUCKETS];        /* bucket i holds (bound[i-1], bound[i]] */
static uint16_t first_bucket[OCTAVES * SUBS]; /* the bucket of each sub-range's lower end */
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* The smallest i with v <= bound[i] (the last bucket for larger values). */
static int bucket_search(double v)
{
    int lo = 0, hi = SKETCH_BUCKETS - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (v <= bound[mid]) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

static void build_tables(void)
{
    gamma_ = (1 + SKETCH_ALPHA) / (1 - SKETCH_ALPHA);
    for (int i = 0; i < SKETCH_BUCKETS; i++) bound[i] = pow(gamma_, i);
    for (int e = 0; e < OCTAVES; e++)
        for (int m = 0; m < SUBS; m++)
            first_bucket[e * SUBS + m] = (uint16_t)bucket_search(ldexp(1.0 + (double)m / SUBS, e));
}

static inline void init_tables(void) { pthread_once(&once, build_tables); }

/* v >= 1 */
static inline int bucket_of(double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    int e = (int)((bits >> 52) & 0x7ff) - 1023;
    if (e >= OCTAVES) return SKETCH_BUCKETS - 1;
    int g = first_bucket[e * SUBS + (int)((bits >> (52 - SUB_BITS)) & (SUBS - 1))];
    return v <= bound[g] ? g : (g + 1 < SKETCH_BUCKETS ? g + 1 : g);
}

void sketch_init(sketch *s)
{
    memset(s, 0, sizeof *s);
    s->min = INFINITY;
    s->max = -INFINITY;
    s->lo = SKETCH_BUCKETS;
    s->hi = -1;
}

void sketch_free(sketch *s)
{
    free(s->win);
    sketch_init(s);
}

void sketch_reset(sketch *s)
{
    uint64_t *w = s->win;
    int base = s->base, cap = s->cap;
    if (w && s->lo <= s->hi) memset(w + (s->lo - base), 0, (size_t)(s->hi - s->lo + 1) * sizeof *w);
    sketch_init(s);
    s->win = w;
    s->base = base;
    s->cap = cap;
}

/* Makes buckets [lo, hi] addressable: the window grows with some slack on
 * the side it grows, and never beyond the SKETCH_BUCKETS there are. */
static int cover(sketch *s, int lo, int hi)
{
    if (s->win && lo >= s->base && hi < s->base + s->cap) return 0;
    int nlo = lo, nhi = hi;
    if (s->win) {
        if (s->base < nlo) nlo = s->base;
        if (s->base + s->cap - 1 > nhi) nhi = s->base + s->cap - 1;
    }
    int span = nhi - nlo + 1, slack = span / 2 + 32;
    if (lo < (s->win ? s->base : lo + 1)) nlo -= slack;
    if (!s->win || hi >= s->base + s->cap) nhi += slack;
    if (nlo < 0) nlo = 0;
    if (nhi > SKETCH_BUCKETS - 1) nhi = SKETCH_BUCKETS - 1;
    int ncap = nhi - nlo + 1;
    uint64_t *w = calloc((size_t)ncap, sizeof *w);
    if (!w) return -1;
    if (s->win) memcpy(w + (s->base - nlo), s->win, (size_t)s->cap * sizeof *w);
    free(s->win);
    s->win = w;
    s->base = nlo;
    s->cap = ncap;
    return 0;
}

static inline void touch(sketch *s, int i)
{
    if (i < s->lo) s->lo = i;
    if (i > s->hi) s->hi = i;
}

static inline uint64_t count_at(const sketch *s, int i) { return s->win[i - s->base]; }

int sketch_add(sketch *s, double v)
{
    if (v != v) return 0;
    int i = -1;
    if (v >= 1) {
        init_tables();
        i = bucket_of(v);
        if (cover(s, i, i)) return -1;
        s->win[i - s->base]++;
        touch(s, i);
    } else {
        s->low++;
    }
    s->n++;
    s->sum += v;
    if (v < s->min) s->min = v;
    if (v > s->max) s->max = v;
    return 0;
}

int sketch_add_n(sketch *s, double v, uint64_t n)
{
    if (v != v || !n) return 0;
    if (v >= 1) {
        init_tables();
        int i = bucket_of(v);
        if (cover(s, i, i)) return -1;
        s->win[i - s->base] += n;
        touch(s, i);
    } else {
        s->low += n;
    }
    s->n += n;
    s->sum += v * (double)n;
    if (v < s->min) s->min = v;
    if (v > s->max) s->max = v;
    return 0;
}

int sketch_merge(sketch *into, const sketch *from)
{
    if (!from->n) return 0;
    if (from->lo <= from->hi) {
        if (cover(into, from->lo, from->hi)) return -1;
        /* Two windows never overlap: restrict lets the loop be vectorised. */
        uint64_t *restrict d = into->win + (from->lo - into->base);
        const uint64_t *restrict f = from->win + (from->lo - from->base);
        for (int i = 0, k = from->hi - from->lo + 1; i < k; i++) d[i] += f[i];
        touch(into, from->lo);
        touch(into, from->hi);
    }
    into->n += from->n;
    into->low += from->low;
    into->sum += from->sum;
    if (from->min < into->min) into->min = from->min;
    if (from->max > into->max) into->max = from->max;
    return 0;
}

double sketch_quantile(const sketch *s, double q)
{
    if (!s->n) return NAN;
    init_tables();
    if (q <= 0) return s->min;
    if (q >= 1) return s->max;
    /* The value of rank floor(q * (n - 1)), 0-based: the lower of the two
     * order statistics an exact interpolated quantile sits between. */
    uint64_t rank = (uint64_t)floor(q * (double)(s->n - 1));
    if (rank < s->low) return s->min;
    uint64_t seen = s->low;
    for (int i = s->lo; i <= s->hi; i++) {
        seen += count_at(s, i);
        if (seen > rank) {
            double v = 2 * bound[i] / (gamma_ + 1);
            if (v < s->min) v = s->min;
            if (v > s->max) v = s->max;
            return v;
        }
    }
    return s->max;
}

/* ---- bytes -------------------------------------------------------------- */

void put_uvarint(buf *b, uint64_t v)
{
    unsigned char t[10];
    buf_put(b, t, (size_t)(uvarint_at(t, v) - t));
}

void put_f64(buf *b, double v)
{
    uint64_t x;
    memcpy(&x, &v, sizeof x);
    unsigned char t[8];
    for (int i = 0; i < 8; i++) t[i] = (unsigned char)(x >> (8 * i));
    buf_put(b, t, 8);
}

int get_uvarint(const unsigned char *p, size_t n, size_t *at, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*at >= n) return -1;
        unsigned char c = p[(*at)++];
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

int get_f64(const unsigned char *p, size_t n, size_t *at, double *out)
{
    if (*at > n || n - *at < 8) return -1;
    uint64_t x = 0;
    for (int i = 0; i < 8; i++) x |= (uint64_t)p[*at + (size_t)i] << (8 * i);
    *at += 8;
    memcpy(out, &x, sizeof *out);
    return 0;
}

/* n, low, [min, max, sum, lo, span, counts[lo .. lo+span)] when n > 0. */
void sketch_encode(const sketch *s, buf *b)
{
    put_uvarint(b, s->n);
    if (!s->n) return;
    put_uvarint(b, s->low);
    put_f64(b, s->min);
    put_f64(b, s->max);
    put_f64(b, s->sum);
    int lo = s->lo <= s->hi ? s->lo : 0, span = s->lo <= s->hi ? s->hi - s->lo + 1 : 0;
    put_uvarint(b, (uint64_t)lo);
    put_uvarint(b, (uint64_t)span);
    for (int i = 0; i < span; i++) put_uvarint(b, count_at(s, lo + i));
}

long sketch_decode_merge(sketch *s, const unsigned char *p, size_t n)
{
    size_t at = 0;
    uint64_t cnt, low, lo, span;
    if (get_uvarint(p, n, &at, &cnt)) return -1;
    if (!cnt) return (long)at;
    sketch t;
    sketch_init(&t);
    if (get_uvarint(p, n, &at, &low) || low > cnt || get_f64(p, n, &at, &t.min) || get_f64(p, n, &at, &t.max) ||
        get_f64(p, n, &at, &t.sum) || get_uvarint(p, n, &at, &lo) || get_uvarint(p, n, &at, &span) ||
        lo >= SKETCH_BUCKETS || span > SKETCH_BUCKETS - lo || (span == 0) != (low == cnt) || !(t.min <= t.max))
        return -1;
    /* Read into a scratch array first: bad bytes leave s unchanged. */
    uint64_t tmp[SKETCH_BUCKETS];
    uint64_t total = low;
    for (uint64_t i = 0; i < span; i++) {
        if (get_uvarint(p, n, &at, &tmp[i]) || tmp[i] > cnt) return -1;
        total += tmp[i];
    }
    if (total != cnt || (span && (tmp[0] == 0 || tmp[span - 1] == 0))) return -1;
    if (span) {
        if (cover(s, (int)lo, (int)(lo + span - 1))) return -1;
        uint64_t *restrict d = s->win + ((int)lo - s->base);
        for (uint64_t i = 0; i < span; i++) d[i] += tmp[i];
        touch(s, (int)lo);
        touch(s, (int)(lo + span - 1));
    }
    s->n += cnt;
    s->low += low;
    s->sum += t.sum;
    if (t.min < s->min) s->min = t.min;
    if (t.max > s->max) s->max = t.max;
    return (long)at;
}
