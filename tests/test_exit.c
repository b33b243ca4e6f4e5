/*
 * test_exit -- nothing lost at exit: a program that returns from main()
 * or calls exit() without tally_close() still has every event it recorded
 * in its file, and a run_end that says it was not closed.
 *
 * The test runs itself as the program (argv[1] says how it ends), then
 * reads the file it wrote.
 */
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

enum { EVENTS = 20000 };

static tally_t *open_at(const char *path)
{
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    cfg.flush_ms = 60000;     /* nothing is written by the timer before exit */
    cfg.flush_events = 1000000;
    cfg.queue_bytes = 64 << 20;
    return tally_open(&cfg);
}

static void record(tally_t *h, int n)
{
    for (int i = 0; i < n; i++) {
        tally_request q = {0};
        q.model = "m";
        q.completion_tokens = 1;
        q.latency_us = i + 1;
        tally_request_record(h, &q);
    }
}

static void *recorder(void *arg)
{
    record(arg, EVENTS);
    return NULL;
}

/* The program: records, then ends as told, never calling tally_close. */
static int program(const char *how, const char *path)
{
    tally_t *h = open_at(path);
    tally_step_begin(h, 3); /* an open span: written unfinished at exit */
    if (!strcmp(how, "return")) {
        record(h, EVENTS);
        return 0;
    }
    if (!strcmp(how, "exit-thread")) {
        /* exit() from the main thread while another thread has recorded. */
        pthread_t t;
        pthread_create(&t, NULL, recorder, h);
        pthread_join(t, NULL);
        exit(0);
    }
    return 2;
}

static void run_program(const char *self, const char *how, const char *path)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* The program leaks its handle on purpose: no leak report. */
        setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
        execl(self, self, how, path, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static const char *self_path;

static void check_file(const char *path)
{
    th_lines l;
    assert_int_equal(th_read_lines(path, &l), 0);
    /* run_start, every request, the unfinished step, run_end. */
    assert_int_equal(l.n, (size_t)EVENTS + 3);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const jv *v = th_parse(&a, l.line[0]);
    TH_STR(v, "kind", "run_start");
    /* The span's thread may be drained before or after the requests'. */
    int steps = 0;
    for (size_t i = 1; i + 1 < l.n; i++) {
        json_arena_reset(&a);
        v = th_parse(&a, l.line[i]);
        if (!strcmp(jv_str(jv_get(v, "kind")), "step")) {
            TH_TRUE(v, "unfinished");
            steps++;
        }
    }
    assert_int_equal(steps, 1);
    json_arena_reset(&a);
    v = th_parse(&a, l.line[l.n - 1]);
    TH_STR(v, "kind", "run_end");
    TH_STR(v, "reason", "not_closed");
    TH_INT(v, "stats.requests", EVENTS);
    TH_INT(v, "stats.dropped", 0);
    json_arena_free(&a);
    th_lines_free(&l);
}

/* Runs the program ending as `how`, then reads what it wrote. */
static void run_and_check(const char *how)
{
    const char *tmp = th_tmpdir("exit");
    char dir[600], path[700];
    snprintf(dir, sizeof dir, "%s", tmp);
    snprintf(path, sizeof path, "%s/e.jsonl", dir);
    run_program(self_path, how, path);
    check_file(path);
    th_rmrf(dir);
}

static void test_return_from_main(void **state)
{
    (void)state;
    run_and_check("return");
}

static void test_exit_with_threads(void **state)
{
    (void)state;
    run_and_check("exit-thread");
}

int main(int argc, char **argv)
{
    if (argc == 3) return program(argv[1], argv[2]);
    self_path = argv[0];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_return_from_main),
        cmocka_unit_test(test_exit_with_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
