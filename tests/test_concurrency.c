/*
 * test_concurrency -- 4 threads x 1,000,000 events.  With a small queue,
 * written + dropped == offered (nothing unaccounted for).  With a queue
 * large enough, nothing is dropped and every event arrives exactly once.
 * Run under ThreadSanitizer in CI.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "helpers.h"

#define THREADS 4
#ifndef PER_THREAD
#define PER_THREAD 1000000
#endif

typedef struct seen {
    unsigned char *bits[THREADS];
    _Atomic uint64_t dupes, bad, total;
} seen;

/* Subscriber: lines look like {"kind":"x","t":..,"ts":..,"th":N,"i":M}. */
static void on_line(void *ud, const char *line, size_t len)
{
    seen *s = ud;
    atomic_fetch_add(&s->total, 1);
    const char *p = memmem(line, len, "\"th\":", 5);
    if (!p) return; /* run_start, run_end */
    long th = strtol(p + 5, NULL, 10);
    const char *q = memmem(line, len, "\"i\":", 4);
    long i = q ? strtol(q + 4, NULL, 10) : -1;
    if (th < 0 || th >= THREADS || i < 0 || i >= PER_THREAD) {
        atomic_fetch_add(&s->bad, 1);
        return;
    }
    if (s->bits[th][i]) atomic_fetch_add(&s->dupes, 1);
    s->bits[th][i] = 1;
}

typedef struct arg {
    tally_t *h;
    int th;
} arg;

static void *producer(void *p)
{
    arg *a = p;
    for (int i = 0; i < PER_THREAD; i++) {
        tally_field f[2] = {{"th", TALLY_FIELD_INT, a->th, 0, NULL}, {"i", TALLY_FIELD_INT, i, 0, NULL}};
        tally_event(a->h, "x", f, 2);
    }
    return NULL;
}

static void run(tally_t *h)
{
    pthread_t t[THREADS];
    arg a[THREADS];
    for (int i = 0; i < THREADS; i++) {
        a[i] = (arg){h, i};
        pthread_create(&t[i], NULL, producer, &a[i]);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
}

static void test_accounting_small_queue(void **state)
{
    (void)state;
    seen *s = calloc(1, sizeof *s);
    for (int i = 0; i < THREADS; i++) s->bits[i] = calloc(PER_THREAD, 1);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.subscriber = on_line;
    cfg.subscriber_ud = s;
    cfg.queue_bytes = 16384; /* small: drops are expected */
    tally_t *h = tally_open(&cfg);
    run(h);
    assert_int_equal(tally_flush(h, 30000), 0);
    tally_counters c;
    tally_get_counters(h, &c);
    assert_int_equal(c.offered, (uint64_t)THREADS * PER_THREAD);
    assert_int_equal(c.written + c.dropped, c.offered); /* tally.h's rule, exactly */
    assert_int_equal(atomic_load(&s->dupes), 0);
    assert_int_equal(atomic_load(&s->bad), 0);
    assert_int_equal(atomic_load(&s->total), c.written + 1); /* the subscriber saw run_start too */
    tally_close(h, NULL);
    for (int i = 0; i < THREADS; i++) free(s->bits[i]);
    free(s);
}

static void test_exactly_once_large_queue(void **state)
{
    (void)state;
    seen *s = calloc(1, sizeof *s);
    for (int i = 0; i < THREADS; i++) s->bits[i] = calloc(PER_THREAD, 1);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.subscriber = on_line;
    cfg.subscriber_ud = s;
    /* Big enough to hold every event of a thread even if the writer never
     * ran: each record is < 128 bytes. */
    cfg.queue_bytes = (size_t)PER_THREAD * 128;
    tally_t *h = tally_open(&cfg);
    run(h);
    tally_close(h, NULL);
    assert_int_equal(atomic_load(&s->dupes), 0);
    assert_int_equal(atomic_load(&s->bad), 0);
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < PER_THREAD; i++)
            if (!s->bits[t][i]) fail_msg("event th=%d i=%d missing", t, i);
    assert_int_equal(atomic_load(&s->total), (uint64_t)THREADS * PER_THREAD + 2);
    for (int i = 0; i < THREADS; i++) free(s->bits[i]);
    free(s);
}

static void *short_lived(void *p)
{
    tally_t *h = p;
    for (int i = 0; i < 100; i++) tally_note(h, "n");
    return NULL;
}

/* Threads that come and go: their rings are drained, then freed. */
static void test_thread_churn(void **state)
{
    (void)state;
    seen *s = calloc(1, sizeof *s);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.subscriber = on_line;
    cfg.subscriber_ud = s;
    cfg.queue_bytes = 65536;
    tally_t *h = tally_open(&cfg);
    for (int round = 0; round < 50; round++) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, short_lived, h);
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    }
    tally_flush(h, 10000);
    tally_counters c;
    tally_get_counters(h, &c);
    assert_int_equal(c.offered, 50 * 4 * 100);
    assert_int_equal(c.dropped, 0);
    assert_int_equal(c.written, 50 * 4 * 100);
    tally_close(h, NULL);
    assert_int_equal(atomic_load(&s->total), 50 * 4 * 100 + 2);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accounting_small_queue),
        cmocka_unit_test(test_exactly_once_large_queue),
        cmocka_unit_test(test_thread_churn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
