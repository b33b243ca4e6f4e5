/* rollup -- see rollup.h.  An open-addressing table of cells; cleared
 * cells are kept (with their sketches' memory) for the next transaction. */
#include "rollup.h"

#include "hindex.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    uint64_t hash;
    rollup_key k;
    buf key;                   /* owns the encoded key */
    agg_cell cell;
} entry;

struct rollup {
    entry **e;                 /* used entries, in the order they came */
    size_t n, cap, max;
    entry **pool;              /* cleared entries for reuse; room for all */
    size_t npool, total;       /* total: entries allocated, used or pooled */
    hindex idx;                /* over e, by hash */
    buf scratch;
};

int64_t rollup_minute(const row *r)
{
    if (!(r->has & ROW_TS)) return -1;
    double m = floor(r->ts / 60);
    if (60.0 * m > r->ts) m -= 1;
    else if (60.0 * (m + 1) <= r->ts) m += 1;
    return (int64_t)m;
}

/* The strings of schema v2's keys, in their order, then the newer ones:
 * RK_* places. */
static int base_places(int out[RK_NSTR])
{
    int n = 0;
    out[n++] = RK_RUN;
    out[n++] = RK_KIND;
    out[n++] = RK_PHASE;
    out[n++] = RK_LABEL(RQ_MODEL);
    out[n++] = RK_LABEL(RQ_ENGINE);
    out[n++] = RK_LABEL(RQ_ROUTE);
    out[n++] = RK_DEGRADED;
    return n;
}

static int is_base_label(int slot) { return slot == RQ_MODEL || slot == RQ_ENGINE || slot == RQ_ROUTE; }

static int newer_places(int out[RK_NSTR])
{
    int n = 0;
    for (int i = 0; i < N_REQUEST_LABELS; i++) {
        const field_def *f = &tally_request_labels[i];
        if ((f->flags & FLD_ROLLUP) && !is_base_label(f->slot)) out[n++] = RK_LABEL(f->slot);
    }
    return n;
}

/* Both lists, worked out once: a key is encoded for every row. */
static int base_list[RK_NSTR], newer_list[RK_NSTR], n_base, n_newer;
static pthread_once_t places_once = PTHREAD_ONCE_INIT;
static void places_init(void)
{
    n_base = base_places(base_list);
    n_newer = newer_places(newer_list);
}

static const sv *key_field(const row *r, int place)
{
    switch (place) {
    case RK_RUN: return &r->run_id;
    case RK_KIND: return &r->kind;
    case RK_PHASE: return &r->phase;
    case RK_DEGRADED: return &r->degraded;
    default: return FIELD_CSV(r, &tally_request_labels[place - RK_LABEL0]);
    }
}

void rollup_key_row(const rollup_key *k, row *r)
{
    row_clear(r);
    r->run_id = k->s[RK_RUN];
    r->kind = k->s[RK_KIND];
    r->phase = k->s[RK_PHASE];
    r->degraded = k->s[RK_DEGRADED];
    for (int i = 0; i < N_REQUEST_LABELS; i++)
        *FIELD_SV(r, &tally_request_labels[i]) = k->s[RK_LABEL(tally_request_labels[i].slot)];
    if (k->ok >= 0) {
        r->ok = k->ok;
        r->has |= ROW_OK;
    }
    if (k->minute >= 0) {
        r->ts = 60.0 * (double)k->minute;
        r->has |= ROW_TS;
    }
}

static unsigned char *put_key_str(unsigned char *o, const sv *f)
{
    if (!f->p) {
        *o++ = 0;
        return o;
    }
    *o++ = 1;
    o = uvarint_at(o, f->n);
    memcpy(o, f->p, f->n);
    return o + f->n;
}

void rollup_key_encode(const row *r, buf *b)
{
    /* Once per row on the writer thread: sized first, then written in place. */
    pthread_once(&places_once, places_init);
    const int *base = base_list, *newer = newer_list;
    int nb = n_base, nn = n_newer, any_newer = 0;
    size_t need = 2;
    for (int i = 0; i < nb; i++) need += 1 + (key_field(r, base[i])->p ? 10 + key_field(r, base[i])->n : 0);
    for (int i = 0; i < nn; i++)
        if (key_field(r, newer[i])->p) any_newer = 1;
    if (any_newer)
        for (int i = 0; i < nn; i++) need += 1 + (key_field(r, newer[i])->p ? 10 + key_field(r, newer[i])->n : 0);
    if (buf_reserve(b, need)) return;
    unsigned char *o = (unsigned char *)b->p + b->len, *start = o;
    for (int i = 0; i < nb; i++) o = put_key_str(o, key_field(r, base[i]));
    *o++ = (unsigned char)((r->has & ROW_OK) ? (r->ok ? 2 : 1) : 0);
    *o++ = (unsigned char)agg_kind(r);
    if (any_newer)
        for (int i = 0; i < nn; i++) o = put_key_str(o, key_field(r, newer[i]));
    b->len += (size_t)(o - start);
}

static int get_key_str(const unsigned char *p, size_t n, size_t *at, sv *out)
{
    if (*at >= n) return -1;
    unsigned char present = p[(*at)++];
    if (present > 1) return -1;
    if (!present) return 0;
    uint64_t len;
    if (get_uvarint(p, n, at, &len) || n - *at < len) return -1;
    *out = (sv){(const char *)p + *at, (size_t)len};
    *at += len;
    return 0;
}

int rollup_key_decode(const void *data, size_t n, int64_t minute, rollup_key *k)
{
    const unsigned char *p = data;
    size_t at = 0;
    memset(k, 0, sizeof *k);
    k->minute = minute;
    k->bytes = data;
    k->len = n;
    pthread_once(&places_once, places_init);
    const int *base = base_list, *newer = newer_list;
    int nb = n_base, nn = n_newer;
    for (int i = 0; i < nb; i++)
        if (get_key_str(p, n, &at, &k->s[base[i]])) return -1;
    if (n - at < 2 || p[at] > 2 || p[at + 1] > AGG_LAST) return -1;
    k->ok = p[at] == 0 ? -1 : p[at] == 2;
    k->agg = p[at + 1];
    at += 2;
    if (at < n)
        for (int i = 0; i < nn; i++)
            if (get_key_str(p, n, &at, &k->s[newer[i]])) return -1;
    return at == n ? 0 : -1;
}

rollup *rollup_new(size_t max_cells)
{
    rollup *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->max = max_cells ? max_cells : 1;
    buf_init(&r->scratch, (size_t)1 << 20);
    return r;
}

static void entry_free(entry *e)
{
    agg_cell_free(&e->cell);
    buf_free(&e->key);
    free(e);
}

void rollup_free(rollup *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) entry_free(r->e[i]);
    for (size_t i = 0; i < r->npool; i++) entry_free(r->pool[i]);
    free(r->e);
    free(r->pool);
    hindex_free(&r->idx);
    buf_free(&r->scratch);
    free(r);
}

size_t rollup_cells(const rollup *r) { return r->n; }

/* Eight bytes at a time: a key is some 60 bytes and is hashed per row. */
static uint64_t hash_key(int64_t minute, const char *p, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)minute * 0xff51afd7ed558ccdull, w;
    for (; n >= 8; n -= 8, p += 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, p, n);
    h = (h ^ w ^ n) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

static uint64_t entry_hash(const void *ud, size_t i) { return ((const rollup *)ud)->e[i]->hash; }

static entry *new_entry(rollup *r, int64_t minute, uint64_t hash, const buf *key)
{
    if (r->n == r->cap) {
        size_t nc = r->cap ? r->cap * 2 : 64;
        entry **ne = realloc(r->e, nc * sizeof *ne);
        if (!ne) return NULL;
        r->e = ne;
        r->cap = nc;
    }
    entry *e = r->npool ? r->pool[--r->npool] : NULL;
    if (!e) {
        /* The pool can take back every entry when the rollup is cleared. */
        entry **np = realloc(r->pool, (r->total + 1) * sizeof *np);
        if (!np) return NULL;
        r->pool = np;
        e = calloc(1, sizeof *e);
        if (!e) return NULL;
        r->total++;
        agg_cell_init(&e->cell);
        buf_init(&e->key, (size_t)1 << 20);
    }
    buf_reset(&e->key);
    buf_put(&e->key, key->p, key->len);
    e->hash = hash;
    if (e->key.failed || rollup_key_decode(e->key.p, e->key.len, minute, &e->k) != 0) {
        r->pool[r->npool++] = e;
        return NULL;
    }
    r->e[r->n++] = e;
    return e;
}

int rollup_add(rollup *r, const row *w)
{
    int64_t minute = rollup_minute(w);
    buf_reset(&r->scratch);
    rollup_key_encode(w, &r->scratch);
    if (r->scratch.failed) return -1;
    uint64_t h = hash_key(minute, r->scratch.p, r->scratch.len);
    if (hindex_fit(&r->idx, r->n, entry_hash, r)) return -1;
    size_t i = hindex_first(&r->idx, h);
    entry *e = NULL;
    for (; r->idx.slot[i] != HINDEX_FREE; i = hindex_next(&r->idx, i)) {
        entry *c = r->e[r->idx.slot[i]];
        if (c->hash == h && c->k.minute == minute && c->key.len == r->scratch.len &&
            memcmp(c->key.p, r->scratch.p, c->key.len) == 0) {
            e = c;
            break;
        }
    }
    if (!e) {
        e = new_entry(r, minute, h, &r->scratch);
        if (!e) return -1;
        r->idx.slot[i] = r->n - 1;
    }
    if (agg_cell_add(&e->cell, w) != 0) return -1;
    return r->n >= r->max ? 1 : 0;
}

int rollup_each(rollup *r, int (*fn)(void *ud, const rollup_key *k, const agg_cell *c), void *ud)
{
    for (size_t i = 0; i < r->n; i++) {
        int rc = fn(ud, &r->e[i]->k, &r->e[i]->cell);
        if (rc) return rc;
    }
    return 0;
}

void rollup_clear(rollup *r)
{
    for (size_t i = 0; i < r->n; i++) {
        agg_cell_reset(&r->e[i]->cell);
        r->pool[r->npool++] = r->e[i];
    }
    r->n = 0;
    hindex_clear(&r->idx);
}
