/*
 * test_prices -- price arithmetic on hand-computed cases (tiers, cached
 * and cache-write subsets, reasoning, dates, patterns, unknown models),
 * LiteLLM's price catalogue format,
 * the library costing requests on the writer thread, and
 * `tally stats --prices` re-costing stored events.
 */
#include <sys/wait.h>
#include <time.h>

#include "helpers.h"
#include "prices.h"

static const char table[] =
    "{\"prices\":["
    "{\"model\":\"gpt-4o\",\"effective_from\":\"2024-01-01\",\"input\":5,\"output\":15},"
    "{\"model\":\"gpt-4o\",\"effective_from\":\"2025-01-01\",\"input\":2.5,\"cached_input\":1.25,"
    "\"cache_write\":3.75,\"output\":10,\"reasoning\":12},"
    "{\"model\":\"gemini-*\",\"input\":1.25,\"output\":5,"
    "\"tiers\":[{\"above_input_tokens\":200000,\"input\":2.5,\"output\":10}]},"
    "{\"model\":\"gemini-2.5-pro\",\"input\":1.5,\"output\":6},"
    "{\"model\":\"cheap\",\"input\":0.075,\"output\":0.3}"
    "]}";

static double day(int y, int m, int d)
{
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = m - 1;
    tm.tm_mday = d;
    return (double)timegm(&tm);
}

static void test_arithmetic(void **state)
{
    (void)state;
    prices p;
    char err[256];
    assert_int_equal(prices_parse(&p, table, strlen(table), err, sizeof err), 0);
    cost c;
    /* 2024 price: $5/M in, $15/M out; unlisted cached rate = input rate. */
    assert_int_equal(prices_cost(&p, "gpt-4o", day(2024, 6, 1), 1000, 400, 0, 100, 0, &c), 0);
    assert_int_equal(c.input, 3000000);   /* 600 uncached x $5/M = $0.003 */
    assert_int_equal(c.cached, 2000000);  /* 400 x $5/M */
    assert_int_equal(c.output, 1500000);  /* 100 x $15/M */
    assert_int_equal(c.total, 6500000);
    /* 2025 price, every subset: prompt 10000 = 3000 uncached + 6000 cached
     * + 1000 cache-write; completion 2000 = 1500 plain + 500 reasoning. */
    assert_int_equal(prices_cost(&p, "gpt-4o", day(2025, 3, 1), 10000, 6000, 1000, 2000, 500, &c), 0);
    assert_int_equal(c.input, 7500000);
    assert_int_equal(c.cached, 7500000);
    assert_int_equal(c.cache_write, 3750000);
    assert_int_equal(c.output, 15000000);
    assert_int_equal(c.reasoning, 6000000);
    assert_int_equal(c.total, 39750000);
    /* The day the new price starts is already costed at it. */
    assert_int_equal(prices_cost(&p, "gpt-4o", day(2025, 1, 1), 1000000, 0, 0, 0, 0, &c), 0);
    assert_int_equal(c.total, 2500000000);
    /* Before any price: unpriced, not zero. */
    assert_int_equal(prices_cost(&p, "gpt-4o", day(2023, 12, 31), 1000, 0, 0, 0, 0, &c), -1);
    /* Patterns and tiers. */
    assert_int_equal(prices_cost(&p, "gemini-1.5-flash", day(2025, 1, 1), 100, 0, 0, 10, 0, &c), 0);
    assert_int_equal(c.total, 125000 + 50000);
    assert_int_equal(prices_cost(&p, "gemini-1.5-flash", day(2025, 1, 1), 200000, 0, 0, 0, 0, &c), 0);
    assert_int_equal(c.input, 250000000); /* exactly 200k is not above the tier */
    assert_int_equal(prices_cost(&p, "gemini-1.5-flash", day(2025, 1, 1), 300000, 0, 0, 1000, 0, &c), 0);
    assert_int_equal(c.input, 750000000);
    assert_int_equal(c.output, 10000000);
    /* An exact name beats a pattern. */
    assert_int_equal(prices_cost(&p, "gemini-2.5-pro", day(2025, 1, 1), 1000, 0, 0, 0, 0, &c), 0);
    assert_int_equal(c.total, 1500000);
    /* Fractions of a nano-dollar round half up: 1 x $0.075/M = 75 n$; 3 x $0.3/M = 900 n$. */
    assert_int_equal(prices_cost(&p, "cheap", 0, 1, 0, 0, 3, 0, &c), 0);
    assert_int_equal(c.total, 975);
    /* Unknown model. */
    assert_int_equal(prices_cost(&p, "llama-local", day(2025, 1, 1), 10, 0, 0, 10, 0, &c), -1);
    prices_free(&p);
}

/* LiteLLM's model_prices_and_context_window.json, as that project lays it
 * out: USD per token, a sample_spec entry, entries priced per image (left
 * out), and the _above_200k_tokens tier keys. */
static const char litellm[] =
    "{\"sample_spec\":{\"max_tokens\":\"LEGACY\",\"input_cost_per_token\":0.0,\"output_cost_per_token\":0.0,"
    "\"litellm_provider\":\"one of https://docs.litellm.ai/docs/providers\",\"mode\":\"one of chat\"},"
    "\"gpt-4o\":{\"max_tokens\":16384,\"input_cost_per_token\":2.5e-06,\"output_cost_per_token\":1e-05,"
    "\"cache_read_input_token_cost\":1.25e-06,\"litellm_provider\":\"openai\",\"mode\":\"chat\","
    "\"supports_vision\":true},"
    "\"claude-sonnet-4\":{\"input_cost_per_token\":3e-06,\"output_cost_per_token\":1.5e-05,"
    "\"cache_creation_input_token_cost\":3.75e-06,\"cache_read_input_token_cost\":3e-07,"
    "\"input_cost_per_token_above_200k_tokens\":6e-06,\"output_cost_per_token_above_200k_tokens\":2.25e-05,"
    "\"cache_read_input_token_cost_above_200k_tokens\":6e-07},"
    "\"o3-mini\":{\"input_cost_per_token\":1.1e-06,\"output_cost_per_token\":4.4e-06,"
    "\"output_cost_per_reasoning_token\":5e-06},"
    "\"dall-e-3\":{\"output_cost_per_image\":0.04,\"mode\":\"image_generation\"},"
    "\"openai/gpt-[4]\":{\"input_cost_per_token\":1e-06,\"output_cost_per_token\":1e-06}}";

static void test_litellm(void **state)
{
    (void)state;
    prices p;
    char err[256];
    assert_int_equal(prices_parse(&p, litellm, strlen(litellm), err, sizeof err), 0);
    cost c;
    /* gpt-4o: 1000 prompt of which 400 cached, 100 out. */
    assert_int_equal(prices_cost(&p, "gpt-4o", day(2025, 6, 1), 1000, 400, 0, 100, 0, &c), 0);
    assert_int_equal(c.input, 1500000);   /* 600 x $2.5e-6 */
    assert_int_equal(c.cached, 500000);   /* 400 x $1.25e-6 */
    assert_int_equal(c.output, 1000000);  /* 100 x $1e-5 */
    /* claude-sonnet-4: cache write priced; above 200k the tier's rates,
     * its cache-write rate inherited from the base. */
    assert_int_equal(prices_cost(&p, "claude-sonnet-4", 0, 1000, 100, 200, 10, 0, &c), 0);
    assert_int_equal(c.input, 2100000);
    assert_int_equal(c.cached, 30000);
    assert_int_equal(c.cache_write, 750000);
    assert_int_equal(c.output, 150000);
    assert_int_equal(prices_cost(&p, "claude-sonnet-4", 0, 300000, 100000, 0, 1000, 0, &c), 0);
    assert_int_equal(c.input, 1200000000);   /* 200000 x $6e-6 */
    assert_int_equal(c.cached, 60000000);    /* 100000 x $6e-7 */
    assert_int_equal(c.output, 22500000);    /* 1000 x $2.25e-5 */
    /* reasoning tokens at their own rate */
    assert_int_equal(prices_cost(&p, "o3-mini", 0, 0, 0, 0, 1000, 400, &c), 0);
    assert_int_equal(c.reasoning, 2000000);
    assert_int_equal(c.output, 2640000);
    /* per-image entries are not prices per token; names are never patterns */
    assert_int_equal(prices_cost(&p, "dall-e-3", 0, 10, 0, 0, 10, 0, &c), -1);
    assert_int_equal(prices_cost(&p, "openai/gpt-4", 0, 10, 0, 0, 10, 0, &c), -1);
    assert_int_equal(prices_cost(&p, "openai/gpt-[4]", 0, 10, 0, 0, 10, 0, &c), 0);
    prices_free(&p);
    /* an object of models none of which is priced per token is refused */
    const char none[] = "{\"dall-e-3\":{\"output_cost_per_image\":0.04},\"x\":{\"input_cost_per_token\":\"free\"}}";
    assert_int_equal(prices_parse(&p, none, strlen(none), err, sizeof err), -1);
    assert_non_null(strstr(err, "input_cost_per_token"));
}

static void test_bad_files(void **state)
{
    (void)state;
    prices p;
    char err[256];
    const char *bad[] = {
        "not json", "{}", "{\"prices\":[{\"input\":1,\"output\":1}]}",
        "{\"prices\":[{\"model\":\"m\",\"input\":1}]}",
        "{\"prices\":[{\"model\":\"m\",\"input\":-1,\"output\":1}]}",
        "{\"prices\":[{\"model\":\"m\",\"input\":1,\"output\":1,\"effective_from\":\"soon\"}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        assert_int_equal(prices_parse(&p, bad[i], strlen(bad[i]), err, sizeof err), -1);
        assert_true(strlen(err) > 0);
    }
    assert_int_equal(prices_load(&p, "/no/such/prices.json", err, sizeof err), -1);
}

static void test_library_costs(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("prices");
    char pfile[600], path[600];
    snprintf(pfile, sizeof pfile, "%s/prices.json", dir);
    snprintf(path, sizeof path, "%s/e.jsonl", dir);
    FILE *f = fopen(pfile, "w");
    fputs(table, f);
    fclose(f);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    cfg.prices_path = pfile;
    tally_t *h = tally_open(&cfg);
    tally_request q = {0};
    q.model = "gpt-4o"; /* recorded now: the 2025 price */
    q.prompt_tokens = 10000;
    q.cached_tokens = 6000;
    q.cache_write_tokens = 1000;
    q.completion_tokens = 2000;
    q.reasoning_tokens = 500;
    tally_request_record(h, &q);
    tally_request q2 = {0};
    q2.model = "llama-local";
    q2.prompt_tokens = 5;
    tally_request_record(h, &q2);
    tally_request q3 = q;
    q3.flags = TALLY_HAS_COST;
    q3.cost_nusd = 42; /* the caller's own cost is kept */
    tally_request_record(h, &q3);
    tally_flush(h, 5000);
    tally_counters c;
    tally_get_counters(h, &c);
    assert_int_equal(c.unpriced, 1);
    tally_close(h, NULL);
    th_lines l;
    th_read_lines(path, &l);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const jv *v = th_parse(&a, l.line[1]);
    TH_INT(v, "extra.cost_nusd", 39750000);
    TH_INT(v, "extra.cost_breakdown_nusd.input", 7500000);
    TH_INT(v, "extra.cost_breakdown_nusd.cached", 7500000);
    TH_INT(v, "extra.cost_breakdown_nusd.cache_write", 3750000);
    TH_INT(v, "extra.cost_breakdown_nusd.output", 15000000);
    TH_INT(v, "extra.cost_breakdown_nusd.reasoning", 6000000);
    json_arena_reset(&a);
    v = th_parse(&a, l.line[2]);
    TH_ABSENT(v, "extra.cost_nusd");
    json_arena_reset(&a);
    v = th_parse(&a, l.line[3]);
    TH_INT(v, "extra.cost_nusd", 42);
    json_arena_reset(&a);
    v = th_parse(&a, l.line[4]);
    TH_INT(v, "stats.unpriced", 1);

    /* tally stats --prices re-costs: a cheaper table halves nothing but
     * replaces the stored costs, and the unknown model stays unpriced. */
    snprintf(pfile, sizeof pfile, "%s/flat.json", dir);
    f = fopen(pfile, "w");
    fputs("{\"prices\":[{\"model\":\"gpt-*\",\"input\":1,\"output\":1}]}", f);
    fclose(f);
    char args[2000], out[8192];
    snprintf(args, sizeof args, "stats --json --by model --prices %s %s", pfile, path);
    assert_int_equal(th_run_cli(args, out, sizeof out), 0);
    size_t n = strlen(out);
    json_arena_reset(&a);
    const jv *root = json_parse(&a, out, n, NULL);
    assert_non_null(root);
    int seen = 0;
    for (const jv *g = jv_get(root, "groups")->child; g; g = g->next) {
        const char *m = jv_str(jv_get(g, "model"));
        if (!strcmp(m, "gpt-4o")) {
            /* two requests of 12000 tokens each at $1/M: $0.024 */
            assert_true(jv_num(jv_get(g, "cost_usd"), 0) > 0.023999 && jv_num(jv_get(g, "cost_usd"), 0) < 0.024001);
            seen++;
        }
        if (!strcmp(m, "llama-local")) {
            assert_int_equal(jv_get(g, "cost_usd")->type, JV_NULL);
            assert_int_equal(jv_int(jv_get(g, "unpriced"), 0), 1);
            seen++;
        }
    }
    assert_int_equal(seen, 2);
    json_arena_free(&a);
    th_lines_free(&l);
    th_rmrf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arithmetic),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_litellm),
        cmocka_unit_test(test_library_costs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
