/* stats_group -- keys and groups of `tally stats` (see stats.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hash.h"
#include "hindex.h"
#include "stats.h"
#include "util.h"

static const char *const own_keys[K_N - K_RUN] = {"run", "phase", "kind", "ok", "error", "degraded", "day", "hour"};

const char *key_name(int k) { return k < K_RUN ? tally_request_labels[k].key : own_keys[k - K_RUN]; }

int key_index(const char *s)
{
    for (int i = 0; i < K_N; i++)
        if (!strcmp(s, key_name(i))) return i;
    if (!strcmp(s, "principal")) return RQ_PRINCIPAL_ID;
    if (!strcmp(s, "run_id")) return K_RUN;
    return -1;
}

/* "model, engine, ..., hour": every key, for --help and errors. */
void key_list(char *out, size_t n)
{
    size_t k = 0;
    out[0] = 0;
    for (int i = 0; i < K_N && k < n; i++)
        k += (size_t)snprintf(out + k, n - k, "%s%s", i ? ", " : "", key_name(i));
}

/* Keys the database's rollup has (src/rollup.h); the others (principal,
 * request ids, error text) would make its cells as many as its rows, so
 * questions about them read rows. */
int key_in_rollup(int k)
{
    if (k < K_RUN) return (tally_request_labels[k].flags & FLD_ROLLUP) != 0;
    return k != K_ERROR;
}

int keys_in_rollup(const agg *a, const where *w, int nw)
{
    int ok = 1;
    for (int i = 0; i < a->nby; i++) ok &= key_in_rollup(a->by[i]);
    for (int i = 0; i < nw; i++) ok &= key_in_rollup(w[i].key);
    return ok;
}

static sv or_dash(sv v) { return v.p ? v : SV_LIT("-"); }

sv key_value(const row *e, int k, char *tmp, size_t n)
{
    if (k < K_RUN) return or_dash(*FIELD_CSV(e, &tally_request_labels[k]));
    switch (k) {
    case K_RUN: return or_dash(e->run_id);
    case K_PHASE: return or_dash(e->phase);
    case K_KIND: return or_dash(e->kind);
    case K_OK: return (e->has & ROW_OK) ? (e->ok ? SV_LIT("true") : SV_LIT("false")) : SV_LIT("-");
    case K_ERROR: return or_dash(e->error);
    case K_DEGRADED: return or_dash(e->degraded);
    case K_DAY:
    case K_HOUR: {
        if (!(e->has & ROW_TS)) return SV_LIT("-");
        time_t t = (time_t)floor(e->ts);
        struct tm tm;
        gmtime_r(&t, &tm);
        size_t len = strftime(tmp, n, k == K_DAY ? "%Y-%m-%d" : "%Y-%m-%dT%H", &tm);
        return (sv){tmp, len};
    }
    }
    return SV_LIT("-");
}

static uint64_t hash_bytes(const char *s, size_t n) { return fnv1a(FNV_SEED, s, n); }

static group *group_new(const char *key, size_t n, uint64_t hash)
{
    group *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->key = malloc(n + 1);
    if (!g->key) {
        free(g);
        return NULL;
    }
    memcpy(g->key, key, n);
    g->key[n] = 0;
    g->keylen = n;
    g->hash = hash;
    agg_cell_init(&g->c);
    return g;
}

static uint64_t group_hash(const void *ud, size_t i) { return ((const agg *)ud)->g[i]->hash; }

static group *group_for(agg *a, const char *key, size_t n)
{
    if (hindex_fit(&a->idx, a->ng, group_hash, a)) return NULL;
    uint64_t hash = hash_bytes(key, n);
    size_t h = hindex_first(&a->idx, hash);
    for (; a->idx.slot[h] != HINDEX_FREE; h = hindex_next(&a->idx, h)) {
        group *g = a->g[a->idx.slot[h]];
        if (g->hash == hash && g->keylen == n && !memcmp(g->key, key, n)) return g;
    }
    if (a->ng >= MAX_GROUPS) {
        a->too_many = 1;
        return NULL;
    }
    if (a->ng == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 64;
        group **ng = realloc(a->g, nc * sizeof *ng);
        if (!ng) return NULL;
        a->g = ng;
        a->cap = nc;
    }
    group *g = group_new(key, n, hash);
    if (!g) return NULL;
    a->idx.slot[h] = a->ng;
    a->g[a->ng++] = g;
    return g;
}

int where_parse(where *w, int *nw, const char *val, const char *cmd)
{
    const char *eq = strchr(val, '=');
    if (!eq || eq == val || *nw >= MAX_WHERE) {
        cli_error(cmd, "--where needs KEY=VALUE or KEY!=VALUE (got '%s')", val);
        return -1;
    }
    int neg = eq > val && eq[-1] == '!';
    char k[64];
    snprintf(k, sizeof k, "%.*s", (int)(eq - val - neg), val);
    int ki = key_index(k);
    if (ki < 0) {
        cli_error(cmd, "unknown --where key '%s'", k);
        return -1;
    }
    const char *v = eq + 1;
    if (ki == K_OK) {
        /* ok=false, ok=0 and ok=no are one question */
        if (!strcmp(v, "0") || !strcmp(v, "no")) v = "false";
        else if (!strcmp(v, "1") || !strcmp(v, "yes")) v = "true";
    }
    w[(*nw)++] = (where){ki, neg, v, strlen(v)};
    return 0;
}

int where_pass(const where *w, int nw, const row *e)
{
    char tmp[64];
    for (int i = 0; i < nw; i++) {
        sv v = key_value(e, w[i].key, tmp, sizeof tmp);
        int eq = v.n == w[i].len && !memcmp(v.p, w[i].value, v.n);
        if (eq == w[i].neg) return 0;
    }
    return 1;
}

/* The group of an event that passes --where, or NULL (filtered out, or no
 * memory: a->nomem / a->too_many say which). */
static group *group_of(agg *a, const row *e)
{
    char tmp[64];
    if (!where_pass(a->w, a->nw, e)) return NULL;
    if (!a->nby) return group_for(a, "all", 3);
    char key[MAX_KEY];
    size_t n = 0;
    for (int i = 0; i < a->nby; i++) {
        sv v = key_value(e, a->by[i], tmp, sizeof tmp);
        if (i && n < sizeof key) key[n++] = '\x1f';
        size_t k = v.n < sizeof key - n ? v.n : sizeof key - n;
        memcpy(key + n, v.p, k);
        n += k;
    }
    return group_for(a, key, n);
}

int on_row(void *ud, const row *e)
{
    agg *a = ud;
    /* Only what stats reports: requests, training steps/epochs, errors. */
    if (agg_kind(e) == AGG_NONE) return 0;
    group *g = group_of(a, e);
    if (!g) return a->too_many;
    if (row_is_request(e) && a->reprice) {
        /* --prices: the stored cost is replaced by the file's, at the price
         * of the request's day; no price means unpriced, not $0. */
        row priced = *e;
        cost c;
        char model[256];
        priced.has &= ~(unsigned)(ROW_COST | ROW_COST_USD);
        snprintf(model, sizeof model, "%.*s", (int)e->model.n, e->model.p ? e->model.p : "");
        if (e->model.p && prices_cost(&a->prices, model, (e->has & ROW_TS) ? e->ts : 0, e->prompt, e->cached,
                                      e->cache_write, e->completion, e->reasoning, &c) == 0) {
            priced.cost_nusd = c.total;
            priced.has |= ROW_COST;
        }
        a->nomem |= agg_cell_add(&g->c, &priced) != 0;
        return a->nomem;
    }
    a->nomem |= agg_cell_add(&g->c, e) != 0;
    return a->nomem;
}

/* A cell of a database's rollup: its keys make a row of no measures, which
 * goes through the same --where and --by as events. */
int on_cell(void *ud, const rollup_key *k, const agg_cell *c)
{
    agg *a = ud;
    if (k->agg == AGG_NONE) return 0;
    row e;
    rollup_key_row(k, &e);
    group *g = group_of(a, &e);
    if (!g) return a->too_many;
    a->nomem |= agg_cell_merge(&g->c, c) != 0;
    return a->nomem;
}

/* --by KEYS into a->by; -1 (said) for an unknown key or too many. */
int list_next(const char **p, char tok[LIST_ITEM_MAX])
{
    if (!**p) return -1;
    const char *comma = strchr(*p, ',');
    size_t len = comma ? (size_t)(comma - *p) : strlen(*p);
    int fits = len < LIST_ITEM_MAX;
    snprintf(tok, LIST_ITEM_MAX, "%.*s", (int)(fits ? len : LIST_ITEM_MAX - 1), *p);
    *p += len + (comma != NULL);
    return fits;
}

int by_parse(agg *a, const char *spec, const char *cmd)
{
    const char *p = spec;
    char tok[LIST_ITEM_MAX];
    int fits;
    while ((fits = list_next(&p, tok)) >= 0) {
        if (!tok[0]) continue;
        int k = fits ? key_index(tok) : -1;
        if (k < 0) {
            char keys[512];
            key_list(keys, sizeof keys);
            cli_error(cmd, "unknown --by key '%s' (keys: %s)", tok, keys);
            return -1;
        }
        if (a->nby >= MAX_BY) {
            cli_error(cmd, "at most %d --by keys", MAX_BY);
            return -1;
        }
        a->by[a->nby++] = k;
    }
    return 0;
}


/* ---- one aggregate per thread (cli/par.h) ---------------------------------------- */

void agg_like(agg *t, const agg *a)
{
    memset(t, 0, sizeof *t);
    memcpy(t->by, a->by, sizeof t->by);
    t->nby = a->nby;
    memcpy(t->w, a->w, sizeof t->w);
    t->nw = a->nw;
    t->prices = a->prices; /* read only: the question's own, freed with it */
    t->reprice = a->reprice;
}

void *agg_fork(void *ud)
{
    agg *t = malloc(sizeof *t);
    if (t) agg_like(t, ud);
    return t;
}

int agg_join(void *ud, void *part)
{
    if (!part) return 0;
    int rc = agg_merge(ud, part);
    free(part);
    return rc;
}

int agg_merge(agg *a, agg *t)
{
    a->too_many |= t->too_many;
    a->nomem |= t->nomem;
    for (size_t i = 0; i < t->ng; i++) {
        group *g = t->g[i];
        group *into = a->too_many || a->nomem ? NULL : group_for(a, g->key, g->keylen);
        if (into) a->nomem |= agg_cell_merge(&into->c, &g->c) != 0;
        else if (!a->too_many) a->nomem = 1;
        agg_cell_free(&g->c);
        free(g->key);
        free(g);
    }
    free(t->g);
    t->g = NULL;
    t->ng = 0;
    hindex_free(&t->idx);
    return a->nomem;
}
