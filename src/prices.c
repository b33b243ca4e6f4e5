/* prices -- see prices.h and docs/prices.md. */
#include "prices.h"

#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "encode.h"
#include "json.h"

#define PRICE_FILE_MAX ((size_t)16 << 20)

/* USD per million tokens -> pico-USD per token (exactly, for up to 6
 * decimals: round the product). */
static int rate_of(const jv *v, int64_t *out)
{
    if (!v) {
        *out = -1;
        return 0;
    }
    if (v->type != JV_NUM || jv_num(v, 0) < 0 || jv_num(v, 0) > 1e9) return -1;
    *out = (int64_t)llround(jv_num(v, 0) * 1e6);
    return 0;
}

static int rates_of(const jv *o, price_rates *r)
{
    return rate_of(jv_get(o, "input"), &r->input) || rate_of(jv_get(o, "cached_input"), &r->cached) ||
           rate_of(jv_get(o, "cache_write"), &r->cache_write) || rate_of(jv_get(o, "output"), &r->output) ||
           rate_of(jv_get(o, "reasoning"), &r->reasoning);
}

/* effective_from: a date alone, YYYY-MM-DD (UTC midnight). */
static int parse_date(const char *s, double *out)
{
    return s && strlen(s) == 10 ? iso8601_parse(s, out) : -1;
}

int prices_parse(prices *p, const char *text, size_t len, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    json_arena a;
    json_arena_init(&a, (size_t)64 << 20);
    json_error je;
    jv *root = json_parse(&a, text, len, &je);
    int rc = -1;
    const jv *list = root ? jv_get(root, "prices") : NULL;
    if (!root) {
        snprintf(err, errlen, "price file is not JSON: %s at byte %zu", je.what, je.offset);
        goto out;
    }
    if (!list || list->type != JV_ARR) {
        snprintf(err, errlen, "price file needs a \"prices\" array");
        goto out;
    }
    p->e = calloc(list->count ? list->count : 1, sizeof *p->e);
    int i = 0;
    for (const jv *e = list->child; e; e = e->next, i++) {
        price_entry *pe = &p->e[p->n];
        const char *model = jv_str(jv_get(e, "model"));
        if (e->type != JV_OBJ || !model || !*model) {
            snprintf(err, errlen, "prices[%d]: needs a \"model\" name or pattern", i);
            goto out;
        }
        if (rates_of(e, &pe->r)) {
            snprintf(err, errlen, "prices[%d] (%s): prices must be numbers >= 0 (USD per million tokens)", i, model);
            goto out;
        }
        if (pe->r.input < 0 || pe->r.output < 0) {
            snprintf(err, errlen, "prices[%d] (%s): \"input\" and \"output\" are required", i, model);
            goto out;
        }
        /* Unlisted rates: cached and cache-write input at the input rate,
         * reasoning at the output rate. */
        if (pe->r.cached < 0) pe->r.cached = pe->r.input;
        if (pe->r.cache_write < 0) pe->r.cache_write = pe->r.input;
        if (pe->r.reasoning < 0) pe->r.reasoning = pe->r.output;
        const jv *from = jv_get(e, "effective_from");
        if (from && parse_date(jv_str(from), &pe->effective_from)) {
            snprintf(err, errlen, "prices[%d] (%s): effective_from must be YYYY-MM-DD", i, model);
            goto out;
        }
        const jv *tiers = jv_get(e, "tiers");
        if (tiers) {
            if (tiers->type != JV_ARR || tiers->count > 8) {
                snprintf(err, errlen, "prices[%d] (%s): tiers must be an array of at most 8", i, model);
                goto out;
            }
            for (const jv *t = tiers->child; t; t = t->next) {
                price_tier *pt = &pe->tiers[pe->ntiers++];
                const jv *above = jv_get(t, "above_input_tokens");
                if (!above || above->type != JV_NUM || jv_num(above, 0) < 0 || rates_of(t, &pt->r)) {
                    snprintf(err, errlen, "prices[%d] (%s): a tier needs above_input_tokens and numeric prices", i,
                             model);
                    goto out;
                }
                pt->above_input_tokens = jv_int(above, 0);
            }
        }
        pe->pattern = strdup(model);
        pe->is_glob = strpbrk(model, "*?[") != NULL;
        p->n++;
    }
    rc = 0;
out:
    json_arena_free(&a);
    if (rc) prices_free(p);
    return rc;
}

int prices_load(prices *p, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read price file %s", path);
        return -1;
    }
    char *text = malloc(PRICE_FILE_MAX);
    size_t n = text ? fread(text, 1, PRICE_FILE_MAX, f) : 0;
    int too_big = text && n == PRICE_FILE_MAX;
    fclose(f);
    if (!text || too_big) {
        free(text);
        snprintf(err, errlen, "price file %s is larger than 16 MiB", path);
        return -1;
    }
    int rc = prices_parse(p, text, n, err, errlen);
    free(text);
    return rc;
}

void prices_free(prices *p)
{
    for (size_t i = 0; i < p->n; i++) free(p->e[i].pattern);
    free(p->e);
    memset(p, 0, sizeof *p);
}

/* The entry for model at ts: among those in effect (effective_from <= ts),
 * the latest; an exact name beats a pattern of the same date, a longer
 * pattern beats a shorter one. */
static const price_entry *find(const prices *p, const char *model, double ts)
{
    const price_entry *best = NULL;
    for (size_t i = 0; i < p->n; i++) {
        const price_entry *e = &p->e[i];
        if (e->effective_from > ts) continue;
        if (e->is_glob ? fnmatch(e->pattern, model, 0) != 0 : strcmp(e->pattern, model) != 0) continue;
        if (!best || e->effective_from > best->effective_from ||
            (e->effective_from == best->effective_from &&
             (best->is_glob > e->is_glob ||
              (best->is_glob == e->is_glob && strlen(e->pattern) > strlen(best->pattern)))))
            best = e;
    }
    return best;
}

static int64_t nusd(int64_t tokens, int64_t pico)
{
    if (tokens <= 0) return 0;
    /* pico-USD -> nano-USD, rounded half up; fits int64 below 9e12 tokens at $1000/M. */
    return (tokens * pico + 500) / 1000;
}

int prices_cost(const prices *p, const char *model, double ts, int64_t prompt, int64_t cached,
                int64_t cache_write, int64_t completion, int64_t reasoning, cost *out)
{
    if (!p || !model) return -1;
    const price_entry *e = find(p, model, ts);
    if (!e) return -1;
    price_rates r = e->r;
    const price_tier *tier = NULL;
    for (int i = 0; i < e->ntiers; i++)
        if (prompt > e->tiers[i].above_input_tokens &&
            (!tier || e->tiers[i].above_input_tokens > tier->above_input_tokens))
            tier = &e->tiers[i];
    if (tier) {
        /* A tier's unlisted rates keep the base ones. */
        if (tier->r.input >= 0) r.input = tier->r.input;
        if (tier->r.cached >= 0) r.cached = tier->r.cached;
        if (tier->r.cache_write >= 0) r.cache_write = tier->r.cache_write;
        if (tier->r.output >= 0) r.output = tier->r.output;
        if (tier->r.reasoning >= 0) r.reasoning = tier->r.reasoning;
    }
    if (cached < 0) cached = 0;
    if (cache_write < 0) cache_write = 0;
    if (reasoning < 0) reasoning = 0;
    int64_t uncached = prompt - cached - cache_write;
    int64_t plain_out = completion - reasoning;
    out->input = nusd(uncached, r.input);
    out->cached = nusd(cached, r.cached);
    out->cache_write = nusd(cache_write, r.cache_write);
    out->output = nusd(plain_out, r.output);
    out->reasoning = nusd(reasoning, r.reasoning);
    out->total = out->input + out->cached + out->cache_write + out->output + out->reasoning;
    return 0;
}
