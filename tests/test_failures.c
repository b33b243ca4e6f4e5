/*
 * test_failures -- sinks that fail never hurt the program: an unwritable
 * path, a full disk (/dev/full), a file size limit (RLIMIT_FSIZE, which
 * would raise SIGXFSZ), a torn line left by an earlier crash.
 */
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"


static void record_some(tally_t *h, int n)
{
    for (int i = 0; i < n; i++) {
        tally_request q = {0};
        q.model = "m";
        q.prompt_tokens = i;
        q.latency_us = 1;
        tally_request_record(h, &q);
    }
}

static void test_unwritable_path(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("unwritable");
    char file[600], path[700];
    snprintf(file, sizeof file, "%s/a-file", dir);
    FILE *f = fopen(file, "w");
    fclose(f);
    /* A path under a regular file cannot be created, even by root. */
    snprintf(path, sizeof path, "%s/sub/events.jsonl", file);
    th_logs lg = {0};
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    cfg.log = th_on_log;
    cfg.log_ud = &lg;
    tally_t *h = tally_open(&cfg);
    assert_non_null(h);
    assert_true(tally_enabled(h));
    for (int round = 0; round < 3; round++) {
        record_some(h, 100);
        assert_int_equal(tally_flush(h, 5000), 0);
    }
    tally_counters c;
    tally_get_counters(h, &c);
    assert_int_equal(c.offered, 300);
    assert_int_equal(c.written, 300);
    assert_int_equal(c.sink_failures, 301);
    assert_int_equal(lg.n, 1); /* reported once */
    assert_non_null(strstr(lg.last, "cannot open"));
    tally_close(h, NULL);
    assert_int_equal(lg.n, 1);
    th_rmrf(dir);
}

static void test_disk_full(void **state)
{
    (void)state;
    th_logs lg = {0};
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = "/dev/full"; /* every write fails with ENOSPC */
    cfg.log = th_on_log;
    cfg.log_ud = &lg;
    tally_t *h = tally_open(&cfg);
    record_some(h, 1000);
    assert_int_equal(tally_flush(h, 5000), 0);
    tally_counters c;
    tally_get_counters(h, &c);
    assert_int_equal(c.written, 1000);
    assert_int_equal(c.sink_failures, 1001);
    assert_int_equal(lg.n, 1);
    assert_non_null(strstr(lg.last, "No space"));
    tally_close(h, NULL);
}

static void test_file_size_limit(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("fsize");
    char path[600];
    snprintf(path, sizeof path, "%s/events.jsonl", dir);
    pid_t p = fork();
    if (p == 0) {
        struct rlimit rl = {65536, 65536};
        setrlimit(RLIMIT_FSIZE, &rl);
        th_logs lg = {0};
        tally_config cfg;
        tally_config_init(&cfg);
        cfg.path = path;
        cfg.log = th_on_log;
        cfg.log_ud = &lg;
        cfg.flush_events = 100;
        cfg.queue_bytes = 8 << 20; /* holds all 5000: no drops to report */
        tally_t *h = tally_open(&cfg);
        record_some(h, 5000);
        tally_flush(h, 5000);
        tally_counters c;
        tally_get_counters(h, &c);
        int ok = c.sink_failures > 0 && c.sink_failures < 5001 && lg.n == 1 && c.written == 5000;
        if (!ok) fprintf(stderr, "failures=%llu written=%llu logs=%d (%s)\n", (unsigned long long)c.sink_failures, (unsigned long long)c.written, lg.n, lg.last);
        tally_close(h, NULL);
        _exit(ok ? 0 : 3);
    }
    int st;
    waitpid(p, &st, 0);
    /* No SIGXFSZ: the child ran to its end. */
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_size <= 65536 && sb.st_size > 1000);
    th_lines l;
    th_read_lines(path, &l);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    /* Every whole line parses. */
    for (size_t i = 0; i + (l.torn_last ? 1 : 0) < l.n; i++) {
        json_arena_reset(&a);
        th_parse(&a, l.line[i]);
    }
    json_arena_free(&a);
    th_lines_free(&l);
    th_rmrf(dir);
}

static void test_torn_line_from_crash(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("torn");
    char path[600];
    snprintf(path, sizeof path, "%s/events.jsonl", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"kind\":\"note\",\"t\":0,\"ts\":1,\"text\":\"whole\"}\n{\"kind\":\"no", f);
    fclose(f);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    tally_t *h = tally_open(&cfg);
    tally_note(h, "after");
    tally_close(h, NULL);
    th_lines l;
    th_read_lines(path, &l);
    assert_int_equal(l.n, 5); /* whole, torn, run_start, note, run_end */
    assert_string_equal(l.line[1], "{\"kind\":\"no");
    json_arena a;
    json_arena_init(&a, 1 << 20);
    for (size_t i = 2; i < l.n; i++) {
        json_arena_reset(&a);
        th_parse(&a, l.line[i]);
    }
    json_arena_free(&a);
    th_lines_free(&l);
    th_rmrf(dir);
}

/* Files tally names itself stay inside run_dir, never follow a planted
 * link, and are private when they hold request text. */
static void test_run_id_cannot_escape(void **state)
{
    (void)state;
    const char *tmp = th_tmpdir("escape");
    char dir[600], runs[700], outside[700], inside[800];
    snprintf(dir, sizeof dir, "%s", tmp);
    snprintf(runs, sizeof runs, "%s/runs", dir);
    snprintf(outside, sizeof outside, "%s/x/events.jsonl", dir);
    snprintf(inside, sizeof inside, "%s/runs/_.._x/events.jsonl", dir);
    th_logs lg = {0};
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.run_dir = runs;
    cfg.run_id = "../x";
    cfg.log = th_on_log;
    cfg.log_ud = &lg;
    tally_t *h = tally_open(&cfg);
    assert_string_equal(tally_run_id(h), "_.._x");
    record_some(h, 3);
    tally_close(h, NULL);
    struct stat st;
    assert_int_not_equal(stat(outside, &st), 0);
    assert_int_equal(stat(inside, &st), 0);
    assert_non_null(strstr(lg.last, "_.._x"));
    th_rmrf(dir);
}

static void test_planted_link_not_followed(void **state)
{
    (void)state;
    const char *tmp = th_tmpdir("link");
    char dir[600], target[700], runs[700], link[800], mk[800];
    snprintf(dir, sizeof dir, "%s", tmp);
    snprintf(target, sizeof target, "%s/victim", dir);
    snprintf(runs, sizeof runs, "%s/runs", dir);
    snprintf(mk, sizeof mk, "%s/runs/r1", dir);
    snprintf(link, sizeof link, "%s/runs/r1/events.jsonl", dir);
    FILE *f = fopen(target, "w");
    fclose(f);
    assert_int_equal(mkdir(runs, 0755), 0);
    assert_int_equal(mkdir(mk, 0755), 0);
    assert_int_equal(symlink(target, link), 0);
    th_logs lg = {0};
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.run_dir = runs;
    cfg.run_id = "r1";
    cfg.log = th_on_log;
    cfg.log_ud = &lg;
    tally_t *h = tally_open(&cfg);
    record_some(h, 5);
    tally_flush(h, 0);
    tally_counters c;
    tally_get_counters(h, &c);
    assert_true(c.sink_failures >= 5); /* counted, never written through the link */
    tally_close(h, NULL);
    struct stat st;
    assert_int_equal(stat(target, &st), 0);
    assert_int_equal(st.st_size, 0);
    assert_true(lg.n >= 1);
    th_rmrf(dir);
}

static unsigned mode_of(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) fail_msg("%s is missing", path);
    return st.st_mode & 0777;
}

static void test_file_modes_and_db_directory(void **state)
{
    (void)state;
    const char *tmp = th_tmpdir("modes");
    char dir[600];
    snprintf(dir, sizeof dir, "%s", tmp);
    mode_t old = umask(022);
    for (int capture = 0; capture <= 1; capture++) {
        char file[700], db[800];
        snprintf(file, sizeof file, "%s/c%d/events.jsonl", dir, capture);
        /* The database's directory does not exist: it is created. */
        snprintf(db, sizeof db, "%s/db%d/deeper/events.db", dir, capture);
        tally_config cfg;
        tally_config_init(&cfg);
        cfg.path = file;
        cfg.sqlite_path = db;
        cfg.capture_text = capture;
        tally_t *h = tally_open(&cfg);
        tally_request q = {0};
        q.model = "m";
        q.text = "a private prompt";
        q.latency_us = 1;
        tally_request_record(h, &q);
        tally_flush(h, 0);
        tally_counters c;
        tally_get_counters(h, &c);
        assert_int_equal(c.sink_failures, 0);
        tally_close(h, NULL);
        unsigned want = capture ? 0600 : 0644;
        assert_int_equal(mode_of(file), want);
        assert_int_equal(mode_of(db), want);
    }
    umask(old);
    th_rmrf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unwritable_path),
        cmocka_unit_test(test_disk_full),
        cmocka_unit_test(test_file_size_limit),
        cmocka_unit_test(test_torn_line_from_crash),
        cmocka_unit_test(test_run_id_cannot_escape),
        cmocka_unit_test(test_planted_link_not_followed),
        cmocka_unit_test(test_file_modes_and_db_directory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
