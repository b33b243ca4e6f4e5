/*
 * test_flush -- the flush policy: a batch reaches the file after N events
 * or T milliseconds, whichever comes first, and not before.  (Bounds here
 * are generous; they check the policy, not speed.)
 */
#include <unistd.h>

#include "helpers.h"

static size_t lines_in(const char *path)
{
    th_lines l;
    if (th_read_lines(path, &l) != 0) return 0;
    size_t n = l.n;
    th_lines_free(&l);
    return n;
}

static int wait_for_lines(const char *path, size_t want, int max_ms)
{
    for (int waited = 0; waited < max_ms; waited += 5) {
        if (lines_in(path) >= want) return waited;
        usleep(5000);
    }
    return -1;
}

static void test_by_count(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("flushn");
    char path[600];
    snprintf(path, sizeof path, "%s/e.jsonl", dir);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    cfg.flush_events = 10;
    cfg.flush_ms = 60000;
    tally_t *h = tally_open(&cfg);
    for (int i = 0; i < 9; i++) tally_note(h, "n");
    usleep(300000);
    assert_int_equal(lines_in(path), 0); /* 9 < 10 and 60 s not passed */
    tally_note(h, "tenth");
    int w = wait_for_lines(path, 11, 5000);
    if (w < 0) fprintf(stderr, "lines=%zu\n", lines_in(path));
    assert_true(w >= 0); /* run_start + 10 */
    tally_close(h, NULL);
    assert_int_equal(lines_in(path), 12);
    th_rmrf(dir);
}

static void test_by_time(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("flusht");
    char path[600];
    snprintf(path, sizeof path, "%s/e.jsonl", dir);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    cfg.flush_events = 1000000;
    cfg.flush_ms = 400;
    tally_t *h = tally_open(&cfg);
    for (int i = 0; i < 5; i++) tally_note(h, "n");
    usleep(100000);
    assert_int_equal(lines_in(path), 0); /* too early */
    assert_true(wait_for_lines(path, 6, 5000) >= 0);
    tally_close(h, NULL);
    th_rmrf(dir);
}

static void test_explicit_flush(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("flushx");
    char path[600];
    snprintf(path, sizeof path, "%s/e.jsonl", dir);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    cfg.flush_events = 1000000;
    cfg.flush_ms = 60000;
    cfg.fsync_on_flush = 1;
    tally_t *h = tally_open(&cfg);
    for (int i = 0; i < 3; i++) tally_note(h, "n");
    assert_int_equal(tally_flush(h, 5000), 0);
    assert_int_equal(lines_in(path), 4); /* on disk when tally_flush returns */
    tally_close(h, NULL);
    th_rmrf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_by_count),
        cmocka_unit_test(test_by_time),
        cmocka_unit_test(test_explicit_flush),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
