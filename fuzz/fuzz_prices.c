/*
 * fuzz_prices -- libFuzzer target for price files: tally's own format and
 * LiteLLM's catalogue, told apart by content.  A price file is given by
 * the user, but may come from anywhere (a catalogue downloaded by a
 * script), so every input must be either refused with a reason or loaded.
 *
 * Properties checked on every input:
 *   - nothing crashes or reads outside the input (ASan);
 *   - a refused file says why (a non-empty reason) and holds no entries;
 *   - a loaded file costs requests without overflow: every part of a cost
 *     is >= 0 and the parts add up to the total.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "prices.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    prices p;
    char err[512];
    err[0] = 0;
    if (prices_parse(&p, (const char *)data, size, err, sizeof err) != 0) {
        if (!err[0] || p.n != 0) abort();
        return 0;
    }
    static const char *const models[] = {"gpt-4o", "claude-sonnet-4", "gemini-2.5-pro", "m", "", "x*"};
    for (size_t i = 0; i < p.n && i < 4; i++) {
        cost c;
        const char *name = p.e[i].pattern;
        if (prices_cost(&p, name, 1.8e9, 250000, 1000, 500, 4000, 300, &c) == 0) {
            if (c.input < 0 || c.cached < 0 || c.cache_write < 0 || c.output < 0 || c.reasoning < 0) abort();
            if (c.input + c.cached + c.cache_write + c.output + c.reasoning != c.total) abort();
        }
    }
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        cost c;
        (void)prices_cost(&p, models[i], 0, 10, 0, 0, 10, 0, &c);
    }
    prices_free(&p);
    return 0;
}
