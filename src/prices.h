/*
 * prices -- price tables: what a request cost, in integer nano-USD.
 *
 * A price file (docs/prices.md) lists, per model name or glob pattern,
 * USD per million tokens for input, cached input (cache read), cache
 * write, output and reasoning; optional tiers (a higher price above N
 * input tokens); and the date the price took effect, so that history is
 * costed at the price of its day.
 *
 * Counting rule (no double counting): prompt_tokens includes cached and
 * cache-write tokens, so uncached input = prompt - cached - cache_write;
 * reasoning tokens are part of completion tokens, so plain output =
 * completion - reasoning.  Prices are kept as integer pico-USD per token,
 * so the arithmetic is exact for prices given to 6 decimals.  A model
 * with no price has no cost (never a cost of zero).
 */
#ifndef TALLY_PRICES_H
#define TALLY_PRICES_H

#include <stddef.h>
#include <stdint.h>

typedef struct price_rates {
    /* pico-USD per token; -1 = inherit (tiers) or "same as" (see below) */
    int64_t input, cached, cache_write, output, reasoning;
} price_rates;

typedef struct price_tier {
    int64_t above_input_tokens;  /* applies when prompt_tokens > this */
    price_rates r;
} price_tier;

typedef struct price_entry {
    char *pattern;               /* exact name or fnmatch(3) glob */
    int is_glob;
    double effective_from;       /* Unix seconds, 0 = always */
    price_rates r;
    price_tier tiers[8];
    int ntiers;
} price_entry;

typedef struct prices {
    price_entry *e;
    size_t n;
} prices;

typedef struct cost {
    int64_t total, input, cached, cache_write, output, reasoning;   /* nano-USD */
} cost;

/* Loads a price file; -1 with a one-line reason in err. */
int prices_load(prices *p, const char *path, char *err, size_t errlen);
/* The same from a JSON text (tests, embedded tables). */
int prices_parse(prices *p, const char *json, size_t len, char *err, size_t errlen);
void prices_free(prices *p);

/* Costs a request made at `ts` (Unix seconds).  0 = priced (out filled),
 * -1 = no price for this model at that time. */
int prices_cost(const prices *p, const char *model, double ts, int64_t prompt, int64_t cached,
                int64_t cache_write, int64_t completion, int64_t reasoning, cost *out);

#endif
