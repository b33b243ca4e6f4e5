/* rollup -- see rollup.h.  An open-addressing table of cells; cleared
 * cells are kept (with their sketches' memory) for the next transaction. */
#include "rollup.h"

#include <math.h>
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
    size_t *slot;              /* index into e, SIZE_MAX = free */
    size_t nslot;
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

static const sv *key_field(const row *r, int i)
{
    switch (i) {
    case RK_RUN: return &r->run_id;
    case RK_KIND: return &r->kind;
    case RK_PHASE: return &r->phase;
    case RK_MODEL: return &r->model;
    case RK_ENGINE: return &r->engine;
    case RK_ROUTE: return &r->route;
    default: return &r->degraded;
    }
}

void rollup_key_encode(const row *r, buf *b)
{
    /* Once per row on the writer thread: sized first, then written in place. */
    size_t need = 2;
    for (int i = 0; i < RK_NSTR; i++) need += 1 + (key_field(r, i)->p ? 10 + key_field(r, i)->n : 0);
    if (buf_reserve(b, need)) return;
    unsigned char *o = (unsigned char *)b->p + b->len, *start = o;
    for (int i = 0; i < RK_NSTR; i++) {
        const sv *f = key_field(r, i);
        if (!f->p) {
            *o++ = 0;
            continue;
        }
        *o++ = 1;
        o = uvarint_at(o, f->n);
        memcpy(o, f->p, f->n);
        o += f->n;
    }
    *o++ = (unsigned char)((r->has & ROW_OK) ? (r->ok ? 2 : 1) : 0);
    *o++ = (unsigned char)agg_kind(r);
    b->len += (size_t)(o - start);
}

int rollup_key_decode(const void *data, size_t n, int64_t minute, rollup_key *k)
{
    const unsigned char *p = data;
    size_t at = 0;
    memset(k, 0, sizeof *k);
    k->minute = minute;
    k->bytes = data;
    k->len = n;
    for (int i = 0; i < RK_NSTR; i++) {
        if (at >= n) return -1;
        unsigned char present = p[at++];
        if (present > 1) return -1;
        if (!present) continue;
        uint64_t len;
        if (get_uvarint(p, n, &at, &len) || n - at < len) return -1;
        k->s[i] = (sv){(const char *)p + at, (size_t)len};
        at += len;
    }
    if (at + 2 != n || p[at] > 2 || p[at + 1] > AGG_ERROR) return -1;
    k->ok = p[at] == 0 ? -1 : p[at] == 2;
    k->agg = p[at + 1];
    return 0;
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
    free(r->slot);
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

static int grow_slots(rollup *r)
{
    size_t ns = r->nslot ? r->nslot * 2 : 64;
    size_t *sl = malloc(ns * sizeof *sl);
    if (!sl) return -1;
    for (size_t i = 0; i < ns; i++) sl[i] = SIZE_MAX;
    for (size_t i = 0; i < r->n; i++) {
        size_t h = (size_t)r->e[i]->hash & (ns - 1);
        while (sl[h] != SIZE_MAX) h = (h + 1) & (ns - 1);
        sl[h] = i;
    }
    free(r->slot);
    r->slot = sl;
    r->nslot = ns;
    return 0;
}

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
    if ((r->n + 1) * 2 > r->nslot && grow_slots(r)) return -1;
    size_t i = (size_t)h & (r->nslot - 1);
    entry *e = NULL;
    while (r->slot[i] != SIZE_MAX) {
        entry *c = r->e[r->slot[i]];
        if (c->hash == h && c->k.minute == minute && c->key.len == r->scratch.len &&
            memcmp(c->key.p, r->scratch.p, c->key.len) == 0) {
            e = c;
            break;
        }
        i = (i + 1) & (r->nslot - 1);
    }
    if (!e) {
        e = new_entry(r, minute, h, &r->scratch);
        if (!e) return -1;
        r->slot[i] = r->n - 1;
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
    if (r->slot)
        for (size_t i = 0; i < r->nslot; i++) r->slot[i] = SIZE_MAX;
}
