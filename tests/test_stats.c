/*
 * test_stats -- tally stats on hand-made fixtures with exact numbers,
 * OpenJarvis databases against its aggregator's own SQL, and the sketch's
 * percentile error against exact sorting on 1,000,000 values.
 */
#include <math.h>
#include <sqlite3.h>
#include <sys/wait.h>

#include "helpers.h"
#include "sketch.h"

static char out[1 << 20];

static int run_cli(const char *args) { return th_run_cli(args, out, sizeof out); }

/* The group whose `key` member is `value` in a --json answer. */
static const jv *group_of(const jv *root, const char *key, const char *value)
{
    for (const jv *g = jv_get(root, "groups")->child; g; g = g->next) {
        const char *v = jv_str(jv_get(g, key));
        if (v && !strcmp(v, value)) return g;
    }
    fail_msg("no group %s=%s in %s", key, value, out);
    return NULL;
}

static double num_of(const jv *g, const char *k)
{
    const jv *v = jv_get(g, k);
    if (!v) fail_msg("no %s", k);
    return v->type == JV_NUM ? jv_num(v, 0) : NAN;
}

static void near(double a, double b, int line)
{
    if (!(fabs(a - b) <= 1e-9 * fmax(1, fabs(b)))) fail_msg("line %d: %.17g != %.17g", line, a, b);
}
#define NEAR(a, b) near((double)(a), (double)(b), __LINE__)

static void write_fixture(const char *path)
{
    FILE *f = fopen(path, "w");
    /* Run A: three requests on model m1 (one failed, one degraded), two on
     * m2; run B: training. */
    fputs("{\"kind\":\"run_start\",\"t\":0,\"ts\":1800000000.0,\"run_id\":\"A\",\"schema\":\"toy/v1\","
          "\"started_at\":\"2027-01-15T08:00:00Z\",\"host\":{\"name\":\"h\"},\"backend\":{\"kind\":\"cpu\"},"
          "\"model\":{\"name\":\"m1\"},\"phase\":\"serve\"}\n",
          f);
    fputs("{\"kind\":\"eval\",\"t\":1,\"ts\":1800000001.0,\"phase\":\"serve\",\"name\":\"request\",\"extra\":{"
          "\"model\":\"m1\",\"engine\":\"vllm\",\"prompt_tokens\":100,\"cached_tokens\":40,\"completion_tokens\":10,"
          "\"latency_us\":100000,\"ttft_us\":10000,\"cost_nusd\":1500000,\"energy_j\":5.0,\"ok\":true}}\n",
          f);
    fputs("{\"kind\":\"eval\",\"t\":2,\"ts\":1800000002.0,\"phase\":\"serve\",\"name\":\"request\",\"extra\":{"
          "\"model\":\"m1\",\"engine\":\"vllm\",\"prompt_tokens\":200,\"completion_tokens\":30,"
          "\"latency_us\":300000,\"cost_nusd\":2500000,\"energy_j\":7.0,\"ok\":false,\"error\":\"timeout\"}}\n",
          f);
    fputs("{\"kind\":\"eval\",\"t\":3,\"ts\":1800000003.0,\"phase\":\"serve\",\"name\":\"request\",\"extra\":{"
          "\"model\":\"m1\",\"engine\":\"tgi\",\"prompt_tokens\":50,\"completion_tokens\":20,"
          "\"latency_us\":200000,\"ttft_us\":30000,\"degraded\":\"web_failed\",\"ok\":true}}\n",
          f);
    fputs("{\"kind\":\"eval\",\"t\":4,\"ts\":1800086400.0,\"phase\":\"serve\",\"name\":\"request\",\"extra\":{"
          "\"model\":\"m2\",\"engine\":\"tgi\",\"prompt_tokens\":10,\"completion_tokens\":5,"
          "\"latency_us\":50000,\"ok\":true}}\n",
          f);
    fputs("this line is not JSON\n", f);
    fputs("{\"kind\":\"run_end\",\"t\":5,\"ts\":1800086401.0,\"ended_at\":\"x\",\"reason\":\"completed\","
          "\"stats\":{\"requests\":4,\"errors\":1,\"tokens_out\":65}}\n",
          f);
    fputs("{\"kind\":\"run_start\",\"t\":0,\"ts\":1800000000.0,\"run_id\":\"B\",\"started_at\":\"x\","
          "\"host\":{},\"backend\":{\"kind\":\"cuda\"},\"model\":{\"name\":\"tiny\"},\"phase\":\"train\"}\n",
          f);
    fputs("{\"kind\":\"step\",\"t\":1,\"ts\":1800000001.0,\"phase\":\"train\",\"step\":0,\"loss\":3.0,"
          "\"tokens\":1000,\"wall_us\":100000}\n",
          f);
    fputs("{\"kind\":\"step\",\"t\":2,\"ts\":1800000002.0,\"phase\":\"train\",\"step\":1,\"loss\":1.5,"
          "\"tokens\":1000,\"wall_us\":300000}\n",
          f);
    fputs("{\"kind\":\"step\",\"t\":3,\"ts\":1800000003.0,\"phase\":\"train\",\"step\":2,\"loss\":2.0,"
          "\"tokens\":1000,\"wall_us\":200000}\n",
          f);
    fputs("{\"kind\":\"epoch\",\"t\":4,\"ts\":1800000004.0,\"phase\":\"train\",\"epoch\":0,\"wall_us\":600000}\n", f);
    fputs("{\"kind\":\"error\",\"t\":5,\"ts\":1800000005.0,\"type\":\"E\",\"message\":\"m\",\"phase\":\"train\"}\n",
          f);
    fclose(f);
}

static void test_exact_fixture(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("stats");
    char path[600], args[1200];
    snprintf(path, sizeof path, "%s/fixture.jsonl", dir);
    write_fixture(path);
    snprintf(args, sizeof args, "stats --json --by model %s", path);
    assert_int_equal(run_cli(args), 0);
    json_arena a;
    json_arena_init(&a, 1 << 24);
    const char *js = strstr(out, "{\"groups\"");
    assert_non_null(js);
    const jv *root = json_parse(&a, js, strlen(js), NULL);
    if (!root) fail_msg("not JSON: %s", out);
    assert_int_equal(jv_int(jv_get(root, "skipped_lines"), -1), 1);
    const jv *m1 = group_of(root, "model", "m1");
    NEAR(num_of(m1, "requests"), 3);
    NEAR(num_of(m1, "errors"), 1);
    NEAR(num_of(m1, "error_rate"), 100.0 / 3);
    NEAR(num_of(m1, "prompt_tokens"), 350);
    NEAR(num_of(m1, "cached_tokens"), 40);
    NEAR(num_of(m1, "completion_tokens"), 60);
    NEAR(num_of(m1, "cost_usd"), 0.004);
    NEAR(num_of(m1, "unpriced"), 1);
    NEAR(num_of(m1, "latency_mean_ms"), 200);
    NEAR(num_of(m1, "latency_max_ms"), 300);
    /* p50 of {100, 200, 300} ms is 200, within the sketch's 1%. */
    assert_true(fabs(num_of(m1, "latency_p50_ms") - 200) <= 2);
    NEAR(num_of(m1, "ttft_avg_ms"), 20);
    assert_true(fabs(num_of(m1, "ttft_p50_ms") - 10) <= 0.1);
    NEAR(num_of(m1, "energy_j"), 12);
    NEAR(num_of(m1, "j_per_output_token"), 12.0 / 40);
    /* tok/s: the mean of 10/0.1, 30/0.3, 20/0.2 */
    NEAR(num_of(m1, "throughput_tok_s"), 100);
    assert_int_equal(jv_int(th_get(m1, "degraded.web_failed"), 0), 1);
    const jv *m2 = group_of(root, "model", "m2");
    NEAR(num_of(m2, "requests"), 1);
    assert_int_equal(jv_get(m2, "cost_usd")->type, JV_NULL);    /* unpriced, not $0 */
    assert_int_equal(jv_get(m2, "ttft_p50_ms")->type, JV_NULL); /* not streaming */
    const jv *tr = group_of(root, "model", "tiny") /* the run's model */;
    NEAR(num_of(tr, "steps"), 3);
    NEAR(num_of(tr, "epochs"), 1);
    NEAR(num_of(tr, "loss_first"), 3.0);
    NEAR(num_of(tr, "loss_last"), 2.0);
    NEAR(num_of(tr, "loss_min"), 1.5);
    NEAR(num_of(tr, "error_events"), 1);
    NEAR(num_of(tr, "train_tokens_per_s"), 3000 / 0.6);
    assert_true(fabs(num_of(tr, "step_p50_ms") - 200) <= 2);

    /* --since / --until and --where */
    json_arena_reset(&a);
    snprintf(args, sizeof args, "stats --json --by engine --since 2027-01-15T08:00:01.5Z --until 2027-01-16 %s", path);
    assert_int_equal(run_cli(args), 0);
    root = json_parse(&a, strstr(out, "{\"groups\""), strlen(strstr(out, "{\"groups\"")), NULL);
    assert_non_null(root);
    NEAR(num_of(group_of(root, "engine", "vllm"), "requests"), 1);
    NEAR(num_of(group_of(root, "engine", "tgi"), "requests"), 1);
    json_arena_reset(&a);
    snprintf(args, sizeof args, "stats --json --by day --where ok=false %s", path);
    assert_int_equal(run_cli(args), 0);
    root = json_parse(&a, strstr(out, "{\"groups\""), strlen(strstr(out, "{\"groups\"")), NULL);
    NEAR(num_of(group_of(root, "day", "2027-01-15"), "requests"), 1);
    assert_int_equal(jv_get(root, "groups")->count, 1);

    /* CSV has a header and one row per group. */
    snprintf(args, sizeof args, "stats --csv --by model %s", path);
    assert_int_equal(run_cli(args), 0);
    assert_non_null(strstr(out, "\nmodel,requests,errors,"));  /* after the skipped-line note on stderr */
    /* --strict fails on the bad line, with its number. */
    snprintf(args, sizeof args, "stats --strict %s", path);
    assert_int_equal(run_cli(args), 1);
    assert_non_null(strstr(out, "fixture.jsonl:6"));
    json_arena_free(&a);
    th_rmrf(dir);
}

static void test_bad_input(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("statsbad");
    char path[600], args[1200];
    assert_int_equal(run_cli("stats --bogus x"), 2);
    assert_non_null(strstr(out, "unknown option --bogus"));
    assert_int_equal(run_cli("stats /no/such/file"), 1);
    assert_non_null(strstr(out, "no such file"));
    assert_int_equal(run_cli("stats --by colour x"), 2);
    assert_int_equal(run_cli("stats --since 1h --until 2h x"), 2);
    assert_non_null(strstr(out, "--since is later than --until"));
    assert_int_equal(run_cli("stats --since yesterday x"), 2);
    /* An empty source: says so, no NaN. */
    snprintf(path, sizeof path, "%s/empty.jsonl", dir);
    fclose(fopen(path, "w"));
    snprintf(args, sizeof args, "stats %s", path);
    assert_int_equal(run_cli(args), 0);
    assert_null(strstr(out, "nan"));
    assert_non_null(strstr(out, "no requests or training events"));
    /* A database that is neither tally's nor OpenJarvis's. */
    snprintf(path, sizeof path, "%s/other.db", dir);
    sqlite3 *db;
    sqlite3_open(path, &db);
    sqlite3_exec(db, "CREATE TABLE x(y)", NULL, NULL, NULL);
    sqlite3_close(db);
    snprintf(args, sizeof args, "stats %s", path);
    assert_int_equal(run_cli(args), 1);
    assert_non_null(strstr(out, "neither a tally nor an OpenJarvis database"));
    th_rmrf(dir);
}

/* OpenJarvis: per model and per engine, with and without a time range,
 * tally's figures equal the aggregator's SQL (docs/stats.md). */
static void test_openjarvis(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("oj");
    char path[600], args[1200];
    snprintf(path, sizeof path, "%s/telemetry.db", dir);
    sqlite3 *db;
    sqlite3_open(path, &db);
    sqlite3_exec(db,
                 "CREATE TABLE telemetry(id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp REAL NOT NULL,"
                 " model_id TEXT NOT NULL, engine TEXT NOT NULL DEFAULT '', agent TEXT NOT NULL DEFAULT '',"
                 " prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,"
                 " total_tokens INTEGER NOT NULL DEFAULT 0, latency_seconds REAL NOT NULL DEFAULT 0.0,"
                 " ttft REAL NOT NULL DEFAULT 0.0, cost_usd REAL NOT NULL DEFAULT 0.0,"
                 " energy_joules REAL NOT NULL DEFAULT 0.0, power_watts REAL NOT NULL DEFAULT 0.0,"
                 " gpu_utilization_pct REAL NOT NULL DEFAULT 0.0, throughput_tok_per_sec REAL NOT NULL DEFAULT 0.0,"
                 " metadata TEXT NOT NULL DEFAULT '{}')",
                 NULL, NULL, NULL);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db,
                       "INSERT INTO telemetry(timestamp, model_id, engine, prompt_tokens, completion_tokens,"
                       " total_tokens, latency_seconds, ttft, cost_usd, energy_joules, gpu_utilization_pct,"
                       " throughput_tok_per_sec) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                       -1, &st, NULL);
    const char *models[] = {"qwen", "llama", "mistral"}, *engines[] = {"ollama", "vllm"};
    unsigned seed = 7;
    for (int i = 0; i < 300; i++) {
        seed = seed * 1103515245u + 12345u;
        int p = 10 + (int)(seed % 500), c = 1 + (int)((seed >> 8) % 200);
        sqlite3_bind_double(st, 1, 1800000000.0 + i * 60.0);
        sqlite3_bind_text(st, 2, models[i % 3], -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, engines[(i / 3) % 2], -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 4, p);
        sqlite3_bind_int(st, 5, c);
        sqlite3_bind_int(st, 6, p + c + (i % 5)); /* total_tokens is its own column */
        sqlite3_bind_double(st, 7, 0.05 + (seed % 1000) / 500.0);
        sqlite3_bind_double(st, 8, i % 4 ? 0.0 : 0.01 * (i % 17)); /* mostly non-streaming: 0 */
        sqlite3_bind_double(st, 9, c * 0.000002);
        sqlite3_bind_double(st, 10, c * 0.37);
        sqlite3_bind_double(st, 11, 30 + (seed % 70));
        sqlite3_bind_double(st, 12, c / (0.05 + (seed % 1000) / 500.0));
        sqlite3_step(st);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);

    struct { const char *by, *col; const char *since_iso; double since, until; } cases[] = {
        {"model", "model_id", NULL, 0, 0},
        {"engine", "engine", NULL, 0, 0},
        {"model", "model_id", "2027-01-15T08:50:00Z", 1800003000.0, 0},
        {"engine", "engine", "2027-01-15T08:50:00Z", 1800003000.0, 0},
    };
    json_arena a;
    json_arena_init(&a, 1 << 24);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        if (cases[k].since_iso)
            snprintf(args, sizeof args, "stats --json --by %s --since %s %s", cases[k].by, cases[k].since_iso, path);
        else
            snprintf(args, sizeof args, "stats --json --by %s %s", cases[k].by, path);
        assert_int_equal(run_cli(args), 0);
        json_arena_reset(&a);
        const jv *root = json_parse(&a, strstr(out, "{\"groups\""), strlen(strstr(out, "{\"groups\"")), NULL);
        if (!root) fail_msg("not JSON: %s", out);
        /* The aggregator's own query (OpenJarvis per_model_stats / per_engine_stats). */
        char sql[1024];
        snprintf(sql, sizeof sql,
                 "SELECT %s, COUNT(*), SUM(total_tokens), SUM(prompt_tokens), SUM(completion_tokens),"
                 " SUM(latency_seconds), AVG(latency_seconds), SUM(cost_usd), AVG(ttft), SUM(energy_joules),"
                 " AVG(gpu_utilization_pct), AVG(throughput_tok_per_sec) FROM telemetry%s GROUP BY %s",
                 cases[k].col, cases[k].since_iso ? " WHERE timestamp >= ?" : "", cases[k].col);
        sqlite3_prepare_v2(db, sql, -1, &st, NULL);
        if (cases[k].since_iso) sqlite3_bind_double(st, 1, cases[k].since);
        int groups = 0;
        while (sqlite3_step(st) == SQLITE_ROW) {
            groups++;
            const jv *g = group_of(root, cases[k].by, (const char *)sqlite3_column_text(st, 0));
            NEAR(num_of(g, "requests"), sqlite3_column_double(st, 1));
            NEAR(num_of(g, "total_tokens"), sqlite3_column_double(st, 2));
            NEAR(num_of(g, "prompt_tokens"), sqlite3_column_double(st, 3));
            NEAR(num_of(g, "completion_tokens"), sqlite3_column_double(st, 4));
            NEAR(num_of(g, "latency_total_s"), sqlite3_column_double(st, 5));
            NEAR(num_of(g, "latency_mean_ms") / 1e3, sqlite3_column_double(st, 6));
            NEAR(num_of(g, "cost_usd"), sqlite3_column_double(st, 7));
            NEAR(num_of(g, "ttft_avg_ms") / 1e3, sqlite3_column_double(st, 8));
            NEAR(num_of(g, "energy_j"), sqlite3_column_double(st, 9));
            NEAR(num_of(g, "gpu_util_avg_pct"), sqlite3_column_double(st, 10));
            NEAR(num_of(g, "throughput_tok_s"), sqlite3_column_double(st, 11));
        }
        sqlite3_finalize(st);
        assert_int_equal(groups, (int)jv_get(root, "groups")->count);
        assert_true(groups >= 2);
    }
    sqlite3_close(db);
    json_arena_free(&a);
    th_rmrf(dir);
}

/* ---- the sketch ------------------------------------------------------------ */

static int cmp_dbl(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static double rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return ((*s >> 11) + 0.5) / 9007199254740992.0;
}

static double normal(uint64_t *s)
{
    return sqrt(-2 * log(rnd(s))) * cos(2 * M_PI * rnd(s));
}

static void check_distribution(const char *name, double *v, size_t n)
{
    sketch sk, a, b;
    sketch_init(&sk);
    sketch_init(&a);
    sketch_init(&b);
    for (size_t i = 0; i < n; i++) {
        sketch_add(&sk, v[i]);
        sketch_add(i % 2 ? &a : &b, v[i]);
    }
    sketch_merge(&a, &b); /* two workers' sketches, merged */
    qsort(v, n, sizeof *v, cmp_dbl);
    const double qs[] = {0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0};
    for (size_t k = 0; k < sizeof qs / sizeof qs[0]; k++) {
        double exact = v[(size_t)floor(qs[k] * (double)(n - 1))];
        double got = sketch_quantile(&sk, qs[k]), merged = sketch_quantile(&a, qs[k]);
        double err = fabs(got - exact) / exact;
        if (err > 0.01) fail_msg("%s q=%g: sketch %.6g exact %.6g (%.3f%%)", name, qs[k], got, exact, err * 100);
        assert_true(merged == got);
    }
    sketch_free(&sk);
    sketch_free(&a);
    sketch_free(&b);
}

static void test_sketch_error(void **state)
{
    (void)state;
    enum { N = 1000000 };
    double *v = malloc(N * sizeof *v);
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < N; i++) v[i] = exp(log(50000) + 1.2 * normal(&s)); /* lognormal, us */
    check_distribution("lognormal", v, N);
    for (size_t i = 0; i < N; i++)
        v[i] = rnd(&s) < 0.7 ? 2000 + 300 * fabs(normal(&s)) : 900000 + 50000 * fabs(normal(&s)); /* bimodal */
    check_distribution("bimodal", v, N);
    for (size_t i = 0; i < N; i++) v[i] = 123456.0; /* constant */
    check_distribution("constant", v, N);
    for (size_t i = 0; i < N; i++) v[i] = 1 + rnd(&s) * 3.6e9; /* the whole range, 1 us .. 1 h */
    check_distribution("uniform-range", v, N);
    free(v);
    /* Memory is bounded: the window covers the buckets used, never more
     * than all of them. */
    sketch small, big;
    sketch_init(&small);
    sketch_init(&big);
    for (int i = 0; i < 100000; i++) sketch_add(&small, 1000 + i % 1000);   /* 1-2 ms: 70 buckets */
    for (int i = 0; i < 100000; i++) sketch_add(&big, 1 + (double)i * 36000); /* 1 us .. 1 h */
    assert_true(small.cap < 200);
    assert_true(big.cap <= SKETCH_BUCKETS);
    assert_true(big.hi - big.lo > 2000);
    sketch empty;
    sketch_init(&empty);
    assert_true(isnan(sketch_quantile(&empty, 0.5)));
    sketch_free(&small);
    sketch_free(&big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_fixture),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_openjarvis),
        cmocka_unit_test(test_sketch_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
