/* prices -- see prices.h and docs/prices.md. */
#include "prices.h"

#include <fnmatch.h>
#include <stddef.h>
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
    if (v->type != JV_NUM || !(jv_num(v, 0) >= 0) || jv_num(v, 0) > 1e6) return -1; /* at most $1M per million */
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

/* ---- LiteLLM's model_prices_and_context_window.json ------------------------------------ */

/* USD per token -> pico-USD per token. */
static int rate_per_token(const jv *v, int64_t *out)
{
    if (v->type != JV_NUM || !(jv_num(v, 0) >= 0) || jv_num(v, 0) > 1) return -1; /* at most $1 per token */
    *out = (int64_t)llround(jv_num(v, 0) * 1e12);
    return 0;
}

/* The rate a LiteLLM key names (without any _above_Nk_tokens suffix). */
static int64_t *litellm_slot(price_rates *r, const char *key, size_t n)
{
    static const struct {
        const char *key;
        size_t off;
    } keys[] = {
        {"input_cost_per_token", offsetof(price_rates, input)},
        {"output_cost_per_token", offsetof(price_rates, output)},
        {"cache_read_input_token_cost", offsetof(price_rates, cached)},
        {"cache_creation_input_token_cost", offsetof(price_rates, cache_write)},
        {"output_cost_per_reasoning_token", offsetof(price_rates, reasoning)},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strlen(keys[i].key) == n && !memcmp(keys[i].key, key, n)) return (int64_t *)((char *)r + keys[i].off);
    return NULL;
}

/* "..._above_200k_tokens": the base key's length and the threshold. */
static int litellm_tier_key(const char *key, size_t *base, int64_t *above)
{
    const char *a = strstr(key, "_above_");
    size_t n = strlen(key);
    if (!a || n < 8 || strcmp(key + n - 8, "k_tokens") != 0) return 0;
    const char *d = a + 7, *end = key + n - 8;
    if (d == end) return 0;
    int64_t v = 0;
    for (const char *c = d; c < end; c++) {
        if (*c < '0' || *c > '9' || v > 1000000000) return 0;
        v = v * 10 + (*c - '0');
    }
    *base = (size_t)(a - key);
    *above = v * 1000;
    return 1;
}

/* One model's object: its rates and tiers; 0 when it has an input and an
 * output price per token (other entries -- images, audio, the file's
 * sample_spec -- are not priced per token and are left out). */
static int litellm_entry(const jv *o, price_entry *pe)
{
    price_rates none = {-1, -1, -1, -1, -1};
    pe->r = none;
    for (const jv *m = o->child; m; m = m->next) {
        size_t base;
        int64_t above, rate;
        if (rate_per_token(m, &rate) != 0) continue;
        if (litellm_tier_key(m->key, &base, &above)) {
            price_tier *t = NULL;
            for (int i = 0; i < pe->ntiers; i++)
                if (pe->tiers[i].above_input_tokens == above) t = &pe->tiers[i];
            if (!t && pe->ntiers < 8) {
                t = &pe->tiers[pe->ntiers++];
                t->above_input_tokens = above;
                t->r = none;
            }
            int64_t *slot = t ? litellm_slot(&t->r, m->key, base) : NULL;
            if (slot) *slot = rate;
        } else {
            int64_t *slot = litellm_slot(&pe->r, m->key, m->keylen);
            if (slot) *slot = rate;
        }
    }
    if (pe->r.input < 0 || pe->r.output < 0) return -1;
    if (pe->r.cached < 0) pe->r.cached = pe->r.input;
    if (pe->r.cache_write < 0) pe->r.cache_write = pe->r.input;
    if (pe->r.reasoning < 0) pe->r.reasoning = pe->r.output;
    return 0;
}

/* LiteLLM's catalogue: an object of model name -> object with
 * input_cost_per_token etc.  Names are exact (never patterns). */
static int litellm_parse(prices *p, const jv *root, char *err, size_t errlen)
{
    p->e = calloc(root->count ? root->count : 1, sizeof *p->e);
    if (!p->e) {
        snprintf(err, errlen, "out of memory reading the price file");
        return -1;
    }
    for (const jv *m = root->child; m; m = m->next) {
        price_entry *pe = &p->e[p->n];
        if (m->type != JV_OBJ || !m->keylen || litellm_entry(m, pe) != 0) {
            memset(pe, 0, sizeof *pe);
            continue;
        }
        pe->pattern = strndup(m->key, m->keylen);
        if (!pe->pattern) {
            snprintf(err, errlen, "out of memory reading the price file");
            return -1;
        }
        p->n++;
    }
    if (!p->n) {
        snprintf(err, errlen, "price file: no model with input_cost_per_token and output_cost_per_token");
        return -1;
    }
    return 0;
}

/* LiteLLM's format, told by content: no "prices" array, and some member
 * is an object with an input_cost_per_token. */
static int is_litellm(const jv *root)
{
    if (root->type != JV_OBJ || jv_get(root, "prices")) return 0;
    for (const jv *m = root->child; m; m = m->next)
        if (m->type == JV_OBJ && jv_get(m, "input_cost_per_token")) return 1;
    return 0;
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
    if (is_litellm(root)) {
        rc = litellm_parse(p, root, err, errlen);
        goto out;
    }
    if (!list || list->type != JV_ARR) {
        snprintf(err, errlen, "price file needs a \"prices\" array (or is a LiteLLM model_prices_and_context_window.json)");
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
    /* pico-USD -> nano-USD, rounded half up, in 128 bits (a rate is at
     * most 1e12 pico-USD a token); a part beyond $1e9 -- no real request --
     * is held there, so that the parts and their sum cannot overflow. */
    __int128 v = ((__int128)tokens * pico + 500) / 1000;
    return v > (__int128)1000000000 * 1000000000 ? (int64_t)1000000000 * 1000000000 : (int64_t)v;
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
