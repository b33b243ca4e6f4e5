/*
 * test_fork -- a prefork server: the parent opens the run, four children
 * record requests and errors into the same file, and the parent writes the
 * one run_end whose stats sum every worker.
 */
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define CHILDREN 4
#define PER_CHILD 5000

static void worker(tally_t *h, int id)
{
    for (int i = 0; i < PER_CHILD; i++) {
        tally_request q = {0};
        q.model = "m";
        q.prompt_tokens = 10;
        q.completion_tokens = id + 1;
        q.latency_us = 100;
        tally_request_record(h, &q);
    }
    tally_error(h, "WorkerError", "one per child");
    tally_close(h, NULL); /* in a child: writes what is queued, no run_end */
}

static void test_prefork(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("fork");
    char path[600];
    snprintf(path, sizeof path, "%s/events.jsonl", dir);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    cfg.queue_bytes = 4 << 20;
    tally_t *h = tally_open(&cfg);
    tally_run_start(h);
    /* The parent records too, before and after forking. */
    tally_note(h, "parent before fork");
    pid_t kids[CHILDREN];
    for (int c = 0; c < CHILDREN; c++) {
        kids[c] = fork();
        assert_true(kids[c] >= 0);
        if (kids[c] == 0) {
            worker(h, c);
            _exit(0);
        }
    }
    tally_request q = {0};
    q.model = "parent";
    q.completion_tokens = 1000;
    tally_request_record(h, &q);
    for (int c = 0; c < CHILDREN; c++) {
        int st;
        assert_int_equal(waitpid(kids[c], &st, 0), kids[c]);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    tally_close(h, "completed");

    th_lines l;
    assert_int_equal(th_read_lines(path, &l), 0);
    assert_false(l.torn_last);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    size_t starts = 0, ends = 0, reqs = 0, errs = 0;
    int64_t toks = 0;
    const jv *end = NULL;
    for (size_t i = 0; i < l.n; i++) {
        json_arena_reset(&a);
        const jv *v = th_parse(&a, l.line[i]);
        const char *k = jv_str(jv_get(v, "kind"));
        if (!strcmp(k, "run_start")) starts++;
        if (!strcmp(k, "error")) errs++;
        if (!strcmp(k, "eval")) {
            reqs++;
            toks += jv_int(th_get(v, "extra.completion_tokens"), 0);
        }
        if (!strcmp(k, "run_end")) ends++;
    }
    assert_int_equal(starts, 1);
    assert_int_equal(ends, 1);
    assert_int_equal(reqs, CHILDREN * PER_CHILD + 1);
    assert_int_equal(errs, CHILDREN);
    int64_t want_toks = 1000;
    for (int c = 0; c < CHILDREN; c++) want_toks += (int64_t)(c + 1) * PER_CHILD;
    assert_int_equal(toks, want_toks);
    /* run_end is the last line and sums every process. */
    json_arena_reset(&a);
    end = th_parse(&a, l.line[l.n - 1]);
    TH_STR(end, "kind", "run_end");
    TH_INT(end, "stats.requests", CHILDREN * PER_CHILD + 1);
    TH_INT(end, "stats.errors", CHILDREN);
    TH_INT(end, "stats.tokens_out", want_toks);
    TH_INT(end, "stats.events", (int64_t)l.n);
    TH_INT(end, "stats.dropped", 0);
    TH_INT(end, "stats.processes", CHILDREN + 1);
    TH_INT(end, "stats.lost", 0); /* every child closed: nothing unaccounted */
    json_arena_free(&a);
    th_lines_free(&l);
    th_rmrf(dir);
}

/* A child that never records and exits without closing adds nothing, and
 * the parent's writer keeps working after fork. */
static void test_parent_keeps_writing(void **state)
{
    (void)state;
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.memory_sink = 1;
    tally_t *h = tally_open(&cfg);
    tally_note(h, "a");
    pid_t p = fork();
    if (p == 0) _exit(0);
    waitpid(p, NULL, 0);
    tally_note(h, "b");
    tally_flush(h, 0);
    assert_int_equal(tally_memory_count(h), 3);
    tally_close(h, NULL);
}

/* A child that ends with _exit() holding a queue: its events cannot be
 * written, but the parent's run_end counts them as lost. */
static void test_child_exit_counted(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("forklost");
    char path[600];
    snprintf(path, sizeof path, "%s/events.jsonl", dir);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    cfg.flush_ms = 60000;        /* nothing is written but by tally_flush */
    cfg.flush_events = 1000000;
    cfg.queue_bytes = 8 << 20;
    tally_t *h = tally_open(&cfg);
    tally_run_start(h);
    enum { N = 3000, FLUSHED = 1000 };
    pid_t kid = fork();
    assert_true(kid >= 0);
    if (kid == 0) {
        for (int i = 0; i < N; i++) {
            tally_request q = {0};
            q.model = "m";
            q.latency_us = 1;
            tally_request_record(h, &q);
            if (i + 1 == FLUSHED) tally_flush(h, 10000); /* these are written */
        }
        _exit(0);                /* no close, no exit handlers */
    }
    int st;
    assert_int_equal(waitpid(kid, &st, 0), kid);
    tally_close(h, "completed");
    th_lines l;
    assert_int_equal(th_read_lines(path, &l), 0);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const jv *end = th_parse(&a, l.line[l.n - 1]);
    TH_STR(end, "kind", "run_end");
    /* The flushed events reached the file, the rest died with the child:
     * each is written or counted as lost, never both. */
    assert_int_equal(l.n - 2, FLUSHED);
    TH_INT(end, "stats.lost", N - FLUSHED);
    json_arena_free(&a);
    th_lines_free(&l);
    th_rmrf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefork),
        cmocka_unit_test(test_parent_keeps_writing),
        cmocka_unit_test(test_child_exit_counted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
