/*
 * test_disabled -- a disabled handle does no I/O, starts no thread and
 * allocates nothing after tally_open(); the environment switches tally on
 * and off without rebuilding.
 */
#include <dirent.h>
#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"

/* Write system calls made by this process so far (/proc/self/io). */
static long long syscw(void)
{
    FILE *f = fopen("/proc/self/io", "r");
    if (!f) return -1;
    char line[128];
    long long v = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "syscw: %lld", &v) == 1) break;
    fclose(f);
    return v;
}

static int threads(void)
{
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    if (d) closedir(d);
    return n;
}

static void record_everything(tally_t *h, int n)
{
    tally_step_info info;
    tally_step_info_init(&info);
    for (int i = 0; i < n; i++) {
        tally_request q = {0};
        q.model = "m";
        q.completion_tokens = 3;
        tally_request_record(h, &q);
        tally_step_begin(h, i);
        tally_step_end(h, i, &info);
        tally_error(h, "E", "m");
        tally_note(h, "n");
        tally_eval(h, "v", 1, 2, 3, NULL);
        tally_event(h, "k", NULL, 0);
    }
}

static void test_no_io_no_alloc(void **state)
{
    (void)state;
    unsetenv("TALLY_PATH");
    unsetenv("TALLY_DISABLE");
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = ""; /* empty path: disabled, as Tep::Events */
    int t0 = threads();
    tally_t *h = tally_open(&cfg);
    assert_non_null(h);
    assert_false(tally_enabled(h));
    long long w0 = syscw();
    struct mallinfo2 m0 = mallinfo2();
    record_everything(h, 100000);
    tally_flush(h, 10);
    struct mallinfo2 m1 = mallinfo2();
    long long w1 = syscw();
    assert_true(w0 >= 0);
    assert_int_equal(w1 - w0, 0);
    assert_int_equal(m1.uordblks, m0.uordblks);
    assert_int_equal(threads(), t0);
    tally_counters c;
    tally_get_counters(h, &c);
    assert_int_equal(c.offered, 0);
    tally_close(h, NULL);
}

static void test_env_disable(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("envdis");
    char path[600];
    snprintf(path, sizeof path, "%s/e.jsonl", dir);
    setenv("TALLY_DISABLE", "1", 1);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    tally_t *h = tally_open(&cfg);
    assert_false(tally_enabled(h));
    record_everything(h, 10);
    tally_close(h, NULL);
    struct stat st;
    assert_int_not_equal(stat(path, &st), 0); /* never created */
    unsetenv("TALLY_DISABLE");
    th_rmrf(dir);
}

static void test_env_path(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("envpath");
    char path[600];
    snprintf(path, sizeof path, "%s/from-env.jsonl", dir);
    setenv("TALLY_PATH", path, 1);
    tally_config cfg;
    tally_config_init(&cfg); /* no path in the program */
    tally_t *h = tally_open(&cfg);
    assert_true(tally_enabled(h));
    tally_note(h, "hello");
    tally_close(h, NULL);
    unsetenv("TALLY_PATH");
    th_lines l;
    assert_int_equal(th_read_lines(path, &l), 0);
    assert_int_equal(l.n, 3);
    assert_non_null(strstr(l.line[1], "hello"));
    th_lines_free(&l);
    th_rmrf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_io_no_alloc),
        cmocka_unit_test(test_env_disable),
        cmocka_unit_test(test_env_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
