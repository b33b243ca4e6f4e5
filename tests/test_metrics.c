/*
 * test_metrics -- the shared series table: exact under concurrent writers
 * and a concurrent reader (run under ThreadSanitizer in CI), the
 * cardinality cap, bucket edges, label escaping.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "helpers.h"
#include "metrics.h"

typedef struct job {
    metrics *m;
    int k;
} job;

#define THREADS 4
#define PER 100000
#define LABELS 50

static void *adder(void *arg)
{
    job *j = arg;
    char model[32];
    for (int i = 0; i < PER; i++) {
        snprintf(model, sizeof model, "m%d", (i + j->k) % LABELS);
        const char *v[4] = {model, "vllm", NULL, "ok"};
        metrics_add(j->m, MXF_REQUESTS, v, 1);
        const char *g[4] = {"chat", "vllm", model, NULL};
        metrics_hist(j->m, MXF_DURATION, g, (double)(i % 100) / 10.0);
    }
    return NULL;
}

static _Atomic int readers_stop;

static void *reader(void *arg)
{
    metrics *m = arg;
    while (!readers_stop) {
        buf b;
        buf_init(&b, (size_t)16 << 20);
        metrics_render(m, &b);
        buf_free(&b);
    }
    return NULL;
}

typedef struct sums {
    double requests;
    uint64_t hist_count;
    int series_req;
} sums;

static void sum_series(void *ud, const mx_series *s)
{
    sums *t = ud;
    if (s->family == MXF_REQUESTS) {
        t->requests += s->value;
        t->series_req++;
    }
    if (s->family == MXF_DURATION) t->hist_count += s->count;
}

static void test_concurrent_exact(void **state)
{
    (void)state;
    metrics *m = metrics_new(0, 0);
    assert_non_null(m);
    pthread_t th[THREADS], rd;
    job jobs[THREADS];
    readers_stop = 0;
    pthread_create(&rd, NULL, reader, m);
    for (int k = 0; k < THREADS; k++) {
        jobs[k] = (job){m, k};
        pthread_create(&th[k], NULL, adder, &jobs[k]);
    }
    for (int k = 0; k < THREADS; k++) pthread_join(th[k], NULL);
    readers_stop = 1;
    pthread_join(rd, NULL);
    sums t = {0};
    metrics_foreach(m, sum_series, &t);
    assert_true(t.requests == (double)THREADS * PER);
    assert_int_equal(t.hist_count, (uint64_t)THREADS * PER);
    assert_int_equal(t.series_req, LABELS);
    assert_int_equal(metrics_overflowed(m), 0);
    metrics_free(m);
}

static void test_cap(void **state)
{
    (void)state;
    metrics *m = metrics_new(0, 10);
    char model[32];
    for (int i = 0; i < 100; i++) {
        snprintf(model, sizeof model, "req-%d", i);
        const char *v[4] = {model, NULL, NULL, "ok"};
        metrics_add(m, MXF_REQUESTS, v, 1);
    }
    sums t = {0};
    metrics_foreach(m, sum_series, &t);
    assert_true(t.requests == 100);
    assert_true(t.series_req <= 11);
    assert_int_equal(metrics_overflowed(m), 90);
    buf b;
    buf_init(&b, (size_t)1 << 20);
    metrics_render(m, &b);
    buf_putc(&b, 0);
    assert_non_null(strstr(b.p, "tally_requests_total{gen_ai_request_model=\"_other\",engine=\"_other\","));
    assert_non_null(strstr(b.p, "tally_metrics_series_overflow_total{family=\"tally_requests_total\"} 90\n"));
    buf_free(&b);
    metrics_free(m);
}

static void test_buckets_and_escaping(void **state)
{
    (void)state;
    metrics *m = metrics_new(0, 0);
    const char *g[4] = {"chat", "p", "we\"ird\\mo\ndel", NULL};
    metrics_hist(m, MXF_DURATION, g, 0.01);  /* on a bound: in that bucket (le) */
    metrics_hist(m, MXF_DURATION, g, 0.0100001);
    metrics_hist(m, MXF_DURATION, g, 1000);  /* past the last bound: +Inf only */
    buf b;
    buf_init(&b, (size_t)1 << 20);
    metrics_render(m, &b);
    buf_putc(&b, 0);
    const char *lbl = "gen_ai_request_model=\"we\\\"ird\\\\mo\\ndel\"";
    char want[512];
    snprintf(want, sizeof want, "gen_ai_client_operation_duration_seconds_bucket{gen_ai_operation_name=\"chat\","
                                "gen_ai_provider_name=\"p\",%s,le=\"0.01\"} 1\n", lbl);
    assert_non_null(strstr(b.p, want));
    snprintf(want, sizeof want, "gen_ai_client_operation_duration_seconds_bucket{gen_ai_operation_name=\"chat\","
                                "gen_ai_provider_name=\"p\",%s,le=\"0.02\"} 2\n", lbl);
    assert_non_null(strstr(b.p, want));
    snprintf(want, sizeof want, "gen_ai_client_operation_duration_seconds_bucket{gen_ai_operation_name=\"chat\","
                                "gen_ai_provider_name=\"p\",%s,le=\"81.92\"} 2\n", lbl);
    assert_non_null(strstr(b.p, want));
    snprintf(want, sizeof want, "gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name=\"chat\","
                                "gen_ai_provider_name=\"p\",%s} 3\n", lbl);
    assert_non_null(strstr(b.p, want));
    buf_free(&b);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_exact),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_buckets_and_escaping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
