/*
 * test_isolation -- a sink that cannot keep up costs nobody else an event.
 *
 * JSONL and SQLite are configured; another process (the sqlite3 shell)
 * holds the database's write lock for 12 s (past the 10 s the database
 * thread waits for a lock) while events are recorded at a steady 2,000 a
 * second, far under what the writer can do.  The JSONL file
 * must have every event; the database has what it could take and the
 * sink counts the rest as its own losses; nothing is counted twice and
 * the recording queue drops nothing.
 */
#include <math.h>
#include <sqlite3.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

static int64_t rows_in(const char *db_path)
{
    sqlite3 *db;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) fail_msg("cannot open %s", db_path);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM events", -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s", sqlite3_errmsg(db));
    int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static void test_locked_database_costs_the_file_nothing(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("isolation");
    char jsonl[600], dbp[600], cmd[2048];
    snprintf(jsonl, sizeof jsonl, "%s/events.jsonl", dir);
    snprintf(dbp, sizeof dbp, "%s/events.db", dir);

    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = jsonl;
    cfg.sqlite_path = dbp;
    cfg.queue_bytes = 64 << 10; /* a few hundred events: a writer stuck for a second would overflow it */
    cfg.flush_ms = 100;
    cfg.model = "m";
    tally_t *h = tally_open(&cfg);
    assert_non_null(h);
    tally_run_start(h);

    enum { RATE = 2000, SECONDS = 15, LOCK_AT = 1 };
    FILE *locker = NULL;
    int n = 0, locked_at = 0;
    char flag[700];
    snprintf(flag, sizeof flag, "%s/locked", dir);
    for (int i = 0; i < RATE * SECONDS; i++) {
        if (i == RATE * LOCK_AT) {
            /* The shell says it holds the lock by creating a file (its
             * stdout is buffered until it exits). */
            snprintf(cmd, sizeof cmd,
                     "sqlite3 '%s' 'BEGIN IMMEDIATE;' '.shell touch %s' '.shell sleep 12' 'COMMIT;'", dbp, flag);
            locker = popen(cmd, "r");
            assert_non_null(locker);
        }
        if (locker && !locked_at && access(flag, F_OK) == 0) locked_at = i;
        tally_request q = {0};
        q.model = "m";
        q.prompt_tokens = 10;
        q.completion_tokens = 5;
        q.latency_us = 1000 + i;
        tally_request_record(h, &q);
        n++;
        sleep_us(1000000 / RATE);
    }
    assert_non_null(locker);
    assert_int_equal(pclose(locker), 0);
    /* The lock was taken while events were being recorded. */
    assert_true(locked_at > 0 && locked_at < RATE * (LOCK_AT + 1));

    tally_flush(h, 10000);
    tally_counters c;
    tally_get_counters(h, &c);
    tally_sink_stats sk[4];
    size_t ns = tally_get_sinks(h, sk, 4);
    assert_int_equal(ns, 2);
    uint64_t lost_jsonl = 0, lost_db = 0;
    for (size_t i = 0; i < ns; i++) {
        if (!strcmp(sk[i].name, "jsonl")) lost_jsonl = sk[i].lost;
        else if (!strcmp(sk[i].name, "sqlite")) lost_db = sk[i].lost;
        else fail_msg("unexpected sink %s", sk[i].name);
    }
    assert_int_equal(c.offered, (uint64_t)n);
    assert_int_equal(c.dropped, 0);           /* the rings never filled */
    assert_int_equal(lost_jsonl, 0);
    assert_true(lost_db > 0);                 /* the lock did cost the database */
    assert_int_equal(c.sink_failures, lost_db);
    tally_close(h, NULL);

    th_lines l;
    assert_int_equal(th_read_lines(jsonl, &l), 0);
    /* Every event, plus run_start and run_end. */
    assert_int_equal(l.n, (size_t)n + 2);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const jv *end = th_parse(&a, l.line[l.n - 1]);
    TH_STR(end, "kind", "run_end");
    TH_INT(end, "stats.sink_lost.jsonl", 0);
    TH_INT(end, "stats.sink_lost.sqlite", (int64_t)lost_db);
    TH_INT(end, "stats.dropped", 0);
    json_arena_free(&a);
    th_lines_free(&l);

    /* The database: every event it could take, and the rest counted, once.
     * Its rows are the requests and run_start/run_end it kept. */
    int64_t rows = rows_in(dbp);
    assert_int_equal((uint64_t)rows + lost_db, (uint64_t)n + 2);
    th_rmrf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_locked_database_costs_the_file_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
