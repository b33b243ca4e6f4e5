/*
 * test_crash -- kill -9 while writing leaves only whole lines, apart from
 * at most one torn last line; and everything flushed before the kill is
 * there (the flush policy bounds what a crash loses).
 */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

static void test_kill9(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("crash");
    char path[600];
    snprintf(path, sizeof path, "%s/events.jsonl", dir);
    for (int round = 0; round < 5; round++) {
        int pfd[2];
        assert_int_equal(pipe(pfd), 0);
        pid_t p = fork();
        if (p == 0) {
            close(pfd[0]);
            tally_config cfg;
            tally_config_init(&cfg);
            cfg.path = path;
            cfg.flush_events = 1;
            cfg.flush_ms = 1;
            tally_t *h = tally_open(&cfg);
            char big[3000];
            memset(big, 'x', sizeof big - 1);
            big[sizeof big - 1] = 0;
            for (long i = 0;; i++) {
                tally_request q = {0};
                q.model = "m";
                q.latency_us = i;
                q.error = (i % 3 == 0) ? big : NULL; /* long lines: more chances to tear */
                tally_request_record(h, &q);
                if (i == 1000) {
                    tally_flush(h, 5000);
                    if (write(pfd[1], "r", 1) != 1) _exit(1);
                }
            }
        }
        close(pfd[1]);
        char c;
        assert_int_equal(read(pfd[0], &c, 1), 1);
        close(pfd[0]);
        usleep(20000 + round * 7000);
        kill(p, SIGKILL);
        waitpid(p, NULL, 0);
    }
    th_lines l;
    assert_int_equal(th_read_lines(path, &l), 0);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    size_t bad = 0, reqs = 0;
    for (size_t i = 0; i < l.n; i++) {
        json_arena_reset(&a);
        const jv *v = json_parse(&a, l.line[i], strlen(l.line[i]), NULL);
        if (!v) {
            bad++;
            continue;
        }
        if (jv_get(v, "extra")) reqs++;
    }
    /* At most one torn line per killed process, and each only where that
     * process stopped; the 1001 flushed before each kill all survive. */
    assert_true(bad <= 5);
    assert_true(reqs >= 5 * 1001);
    json_arena_free(&a);
    th_lines_free(&l);
    th_rmrf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_kill9)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
