/*
 * test_store -- the SQLite sink and store: rows equal the JSONL events
 * field by field; two processes into one database; retention by age and
 * not one row more; import is idempotent; foreign, newer and corrupt
 * databases are refused and left byte-for-byte unchanged; several
 * recording threads, flushes and retention at once (run under TSan in CI);
 * another connection holding the write lock past the busy timeout.
 */
#include <pthread.h>
#include <math.h>
#include <stdatomic.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "agg.h"
#include "store.h"

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)len + 1);
    *n = fread(p, 1, (size_t)len, f);
    fclose(f);
    return p;
}

static int64_t count(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    int64_t n = -1;
    if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static void record_mix(tally_t *h)
{
    tally_stage st[1] = {{"final", 77}};
    for (int i = 0; i < 50; i++) {
        tally_request q = {0};
        q.model = i % 2 ? "m-odd" : "m-even";
        q.engine = "vllm";
        q.route = "direct";
        q.request_id = "r";
        q.principal_id = "p";
        q.prompt_tokens = 100 + i;
        q.cached_tokens = i % 3 ? 10 : 0;
        q.cache_write_tokens = i % 5 ? 0 : 4;
        q.completion_tokens = 20 + i;
        q.reasoning_tokens = i % 4 ? 0 : 3;
        q.latency_us = 1000 * (i + 1);
        q.ttft_us = i % 2 ? 0 : 300;
        q.stages = st;
        q.n_stages = 1;
        q.cost_nusd = 5000 + i;
        q.energy_j = 0.5 * i;
        q.gpu_util_pct = 50 + i;
        q.flags = TALLY_HAS_COST | (i % 2 ? TALLY_HAS_ENERGY : 0) | (i % 3 ? TALLY_HAS_GPU_UTIL : 0);
        q.error = i % 7 == 0 ? "boom" : NULL;
        q.degraded = i % 11 == 0 ? "web_failed" : NULL;
        q.text = "hello";
        tally_request_record(h, &q);
    }
    tally_step_info info;
    tally_step_info_init(&info);
    info.loss = 1.25;
    info.tokens = 4096;
    tally_step_end(h, 9, &info);
    tally_eval(h, "val", 0.5, 1.6, 10, NULL);
    tally_error_at(h, "E", "msg", "train", 9, "r-9");
    tally_note(h, "n");
    tally_epoch_end(h, 1, NULL);
}

/* Compares one column to what the JSON line says. */
static void check_text(sqlite3_stmt *st, int col, sv want, const char *name)
{
    const char *got = (const char *)sqlite3_column_text(st, col);
    if (!want.p) {
        if (got) fail_msg("%s: row has '%s', event has none", name, got);
        return;
    }
    if (!got || strlen(got) != want.n || memcmp(got, want.p, want.n))
        fail_msg("%s: row '%s' != event '%.*s'", name, got ? got : "NULL", (int)want.n, want.p);
}

static void check_int(sqlite3_stmt *st, int col, int present, int64_t want, const char *name)
{
    if (!present) {
        if (sqlite3_column_type(st, col) != SQLITE_NULL) fail_msg("%s: row not NULL", name);
        return;
    }
    if (sqlite3_column_type(st, col) == SQLITE_NULL || sqlite3_column_int64(st, col) != want)
        fail_msg("%s: row %lld != event %lld", name, (long long)sqlite3_column_int64(st, col), (long long)want);
}

static void check_dbl(sqlite3_stmt *st, int col, int present, double want, const char *name)
{
    if (!present) {
        if (sqlite3_column_type(st, col) != SQLITE_NULL) fail_msg("%s: row not NULL", name);
        return;
    }
    if (fabs(sqlite3_column_double(st, col) - want) > 1e-9 * fmax(1, fabs(want)))
        fail_msg("%s: row %.17g != event %.17g", name, sqlite3_column_double(st, col), want);
}

static void test_rows_equal_jsonl(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("rows");
    char path[600], dbp[600];
    snprintf(path, sizeof path, "%s/e.jsonl", dir);
    snprintf(dbp, sizeof dbp, "%s/t.db", dir);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    cfg.sqlite_path = dbp;
    cfg.capture_text = 1;
    cfg.run_id = "rows-run";
    tally_t *h = tally_open(&cfg);
    record_mix(h);
    tally_close(h, NULL);

    th_lines l;
    assert_int_equal(th_read_lines(path, &l), 0);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(dbp, &db), SQLITE_OK);
    assert_int_equal(count(db, "SELECT count(*) FROM events"), (int64_t)l.n);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT ts, run_id, kind, phase, name, model, engine, route, principal_id,"
                                        " request_id, ok, error, degraded, prompt_tokens, cached_tokens,"
                                        " cache_write_tokens, completion_tokens, reasoning_tokens, latency_us,"
                                        " ttft_us, cost_nusd, energy_j, gpu_util_pct, step, loss, text, json,"
                                        " wall_us, step_tokens FROM events WHERE id = ?",
                                        -1, &st, NULL),
                     SQLITE_OK);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    row_ctx ctx;
    row_ctx_init(&ctx, "not-this-one");
    for (size_t i = 0; i < l.n; i++) {
        json_arena_reset(&a);
        const jv *v = th_parse(&a, l.line[i]);
        row r;
        assert_int_equal(row_from_json(v, &ctx, &r), 1);
        assert_non_null(r.id.p);
        sqlite3_bind_text(st, 1, r.id.p, (int)r.id.n, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        check_dbl(st, 0, 1, r.ts, "ts");
        check_text(st, 1, (sv){"rows-run", 8}, "run_id");
        check_text(st, 2, r.kind, "kind");
        check_text(st, 3, r.phase, "phase");
        /* run_start/run_end rows carry no name */
        check_text(st, 4, r.name, "name");
        check_text(st, 5, r.model, "model");
        check_text(st, 6, r.engine, "engine");
        check_text(st, 7, r.route, "route");
        check_text(st, 8, r.principal_id, "principal_id");
        check_text(st, 9, r.request_id, "request_id");
        check_int(st, 10, r.has & ROW_OK, r.ok, "ok");
        check_text(st, 11, r.error, "error");
        check_text(st, 12, r.degraded, "degraded");
        check_int(st, 13, r.has & ROW_PROMPT, r.prompt, "prompt_tokens");
        check_int(st, 14, r.has & ROW_CACHED, r.cached, "cached_tokens");
        check_int(st, 15, r.has & ROW_CACHE_WRITE, r.cache_write, "cache_write_tokens");
        check_int(st, 16, r.has & ROW_COMPLETION, r.completion, "completion_tokens");
        check_int(st, 17, r.has & ROW_REASONING, r.reasoning, "reasoning_tokens");
        check_int(st, 18, r.has & ROW_LATENCY, (int64_t)r.latency_us, "latency_us");
        check_int(st, 19, r.has & ROW_TTFT, (int64_t)r.ttft_us, "ttft_us");
        check_int(st, 20, r.has & ROW_COST, r.cost_nusd, "cost_nusd");
        check_dbl(st, 21, r.has & ROW_ENERGY, r.energy_j, "energy_j");
        check_dbl(st, 22, r.has & ROW_GPU, r.gpu_util, "gpu_util_pct");
        check_int(st, 23, r.has & ROW_STEP, r.step, "step");
        check_dbl(st, 24, r.has & ROW_LOSS, r.loss, "loss");
        check_text(st, 25, r.text, "text");
        check_text(st, 26, (sv){l.line[i], strlen(l.line[i])}, "json");
        check_int(st, 27, r.has & ROW_WALL, (int64_t)r.wall_us, "wall_us");
        check_int(st, 28, r.has & ROW_STEP_TOKENS, r.step_tokens, "step_tokens");
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    /* The runs table has the run, with run_end's stats. */
    assert_int_equal(count(db, "SELECT requests FROM runs WHERE run_id='rows-run'"), 50);
    assert_int_equal(count(db, "SELECT errors FROM runs WHERE run_id='rows-run'"), 1);
    assert_int_equal(count(db, "SELECT final_step FROM runs WHERE run_id='rows-run'"), 9);
    assert_int_equal(count(db, "SELECT count(*) FROM runs WHERE started_at IS NOT NULL AND ended_at IS NOT NULL"), 1);
    sqlite3_close(db);
    json_arena_free(&a);
    th_lines_free(&l);
    th_rmrf(dir);
}

static void log_stderr(void *ud, int level, const char *msg)
{
    (void)ud;
    (void)level;
    fprintf(stderr, "tally: %s\n", msg);
}

static void test_two_processes(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("twoproc");
    char dbp[600];
    snprintf(dbp, sizeof dbp, "%s/t.db", dir);
    enum { N = 100000 };
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            tally_config cfg;
            tally_config_init(&cfg);
            cfg.sqlite_path = dbp;
            cfg.queue_bytes = 64 << 20; /* nothing dropped: every event must land */
            cfg.log = log_stderr;
            tally_t *h = tally_open(&cfg);
            for (int i = 0; i < N; i++) {
                tally_request q = {0};
                q.model = k ? "b" : "a";
                q.prompt_tokens = i;
                tally_request_record(h, &q);
            }
            tally_counters c;
            tally_flush(h, 60000);
            tally_get_counters(h, &c);
            tally_close(h, NULL);
            if (c.dropped || c.sink_failures) fprintf(stderr, "child %d: dropped %llu sink_failures %llu\n", k, (unsigned long long)c.dropped, (unsigned long long)c.sink_failures);
            _exit(c.dropped == 0 && c.sink_failures == 0 ? 0 : 3);
        }
    }
    for (int k = 0; k < 2; k++) {
        int st;
        waitpid(kids[k], &st, 0);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    sqlite3 *db;
    sqlite3_open(dbp, &db);
    assert_int_equal(count(db, "SELECT count(*) FROM events WHERE model='a'"), N);
    assert_int_equal(count(db, "SELECT count(*) FROM events WHERE model='b'"), N);
    assert_int_equal(count(db, "SELECT count(DISTINCT prompt_tokens) FROM events WHERE model='b'"), N);
    assert_int_equal(count(db, "SELECT count(*) FROM events WHERE kind='run_end'"), 2);
    sqlite3_close(db);
    th_rmrf(dir);
}

/* Another connection holds the write lock longer than one busy timeout
 * (2 s): the sink's database thread waits it out instead of losing the
 * batch. */
struct holder {
    const char *path;
    int ms;
    atomic_int locked;
};

static void *hold_lock(void *arg)
{
    struct holder *hd = arg;
    sqlite3 *db;
    sqlite3_open(hd->path, &db);
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    atomic_store(&hd->locked, rc == SQLITE_OK ? 1 : -1);
    usleep((useconds_t)hd->ms * 1000);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(db);
    return NULL;
}

static void test_lock_held_past_busy_timeout(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("heldlock");
    char dbp[600];
    snprintf(dbp, sizeof dbp, "%s/t.db", dir);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.sqlite_path = dbp;
    tally_t *h = tally_open(&cfg);
    assert_non_null(h);
    tally_request q = {0};
    q.model = "m";
    q.prompt_tokens = 1;
    tally_request_record(h, &q);
    tally_flush(h, 10000); /* the database exists, with its schema */
    struct holder hd = {dbp, 4500, 0};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, hold_lock, &hd), 0);
    while (!atomic_load(&hd.locked)) usleep(1000);
    assert_int_equal(atomic_load(&hd.locked), 1);
    for (int i = 0; i < 1000; i++) tally_request_record(h, &q);
    tally_counters c;
    tally_flush(h, 10000);
    pthread_join(th, NULL);
    tally_flush(h, 10000);
    tally_get_counters(h, &c);
    tally_close(h, NULL);
    assert_int_equal(c.sink_failures, 0);
    sqlite3 *db;
    sqlite3_open(dbp, &db);
    assert_int_equal(count(db, "SELECT count(*) FROM events WHERE kind='eval' AND name='request'"), 1001);
    sqlite3_close(db);
    th_rmrf(dir);
}

/* Recording threads, flushes from another thread and retention trims all
 * at once: every event lands, once, and the rollup counts exactly the
 * rows.  The sink's writer, database and checkpointer threads run beside
 * them, so under TSan this is the store's race test. */
enum { TH_THREADS = 4, TH_EVENTS = 25000 };

static void *record_thread(void *arg)
{
    tally_t *h = arg;
    char rid[32];
    for (int i = 0; i < TH_EVENTS; i++) {
        tally_request q = {0};
        snprintf(rid, sizeof rid, "r%d", i);
        q.model = i % 2 ? "odd" : "even";
        q.request_id = rid;
        q.completion_tokens = 1;
        q.latency_us = 100 + i % 1000;
        tally_request_record(h, &q);
    }
    return NULL;
}

static void test_threads_flush_retention(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("threads");
    char dbp[600], jl[600];
    snprintf(dbp, sizeof dbp, "%s/t.db", dir);
    snprintf(jl, sizeof jl, "%s/t.jsonl", dir);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.sqlite_path = dbp;
    cfg.path = jl;
    cfg.queue_bytes = 64 << 20;
    cfg.retention_max_age_s = 86400;    /* trims run, and delete nothing recent */
    cfg.retention_max_rows = 1000000000;
    cfg.log = log_stderr;
    tally_t *h = tally_open(&cfg);
    assert_non_null(h);
    pthread_t t[TH_THREADS];
    for (int k = 0; k < TH_THREADS; k++) assert_int_equal(pthread_create(&t[k], NULL, record_thread, h), 0);
    for (int k = 0; k < 20; k++) {
        tally_flush(h, 10000);
        usleep(1000);
    }
    for (int k = 0; k < TH_THREADS; k++) pthread_join(t[k], NULL);
    tally_counters c;
    tally_flush(h, 60000);
    tally_get_counters(h, &c);
    tally_close(h, NULL);
    assert_int_equal(c.dropped, 0);
    assert_int_equal(c.sink_failures, 0);
    sqlite3 *db;
    sqlite3_open(dbp, &db);
    int64_t want = (int64_t)TH_THREADS * TH_EVENTS;
    assert_int_equal(count(db, "SELECT count(*) FROM events WHERE kind='eval' AND name='request'"), want);
    assert_int_equal(count(db, "SELECT count(DISTINCT id) FROM events"), count(db, "SELECT count(*) FROM events"));
    assert_int_equal(count(db, "SELECT count(*) FROM events WHERE model='odd'"), want / 2);
    /* The rollup's cells count every row, and the request rows exactly. */
    agg_cell all;
    agg_cell_init(&all);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT cell FROM rollup", -1, &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW)
        assert_int_equal(agg_cell_decode_merge(&all, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0)), 0);
    sqlite3_finalize(st);
    assert_int_equal(all.events, count(db, "SELECT count(*) FROM events"));
    assert_int_equal(all.requests, want);
    agg_cell_free(&all);
    sqlite3_close(db);
    char args[1400], out[8192];
    snprintf(args, sizeof args, "stats %s --json", dbp);
    assert_int_equal(th_run_cli(args, out, sizeof out), 0);
    char needle[64];
    snprintf(needle, sizeof needle, "\"requests\":%lld", (long long)want);
    if (!strstr(out, needle)) fail_msg("stats over the database lacks %s: %s", needle, out);
    th_rmrf(dir);
}

static int run_cli(const char *args, char *out, size_t outlen) { return th_run_cli(args, out, outlen); }

/* A file with events a day apart, ending now. */
static void write_aged(const char *path, double now, int days)
{
    FILE *f = fopen(path, "w");
    for (int d = days - 1; d >= 0; d--)
        fprintf(f,
                "{\"kind\":\"eval\",\"t\":1,\"ts\":%.6f,\"phase\":\"serve\",\"name\":\"request\","
                "\"extra\":{\"model\":\"m\",\"prompt_tokens\":1,\"completion_tokens\":1,\"latency_us\":1,"
                "\"text\":\"secret\"}}\n",
                now - d * 86400.0 - 60);
    fclose(f);
}

static void test_retention(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("retention");
    char dbp[600], file[600], args[1400], out[4096];
    snprintf(dbp, sizeof dbp, "%s/t.db", dir);
    snprintf(file, sizeof file, "%s/aged.jsonl", dir);
    double now = (double)time(NULL);
    write_aged(file, now, 40); /* 0 .. 39 days old (+1 min) */
    snprintf(args, sizeof args, "import %s --db %s", file, dbp);
    assert_int_equal(run_cli(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "imported 40"));

    /* By hand: older than 30 days removes exactly days 30..39. */
    snprintf(args, sizeof args, "trim %s --older-than 30d", dbp);
    assert_int_equal(run_cli(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "deleted 10 rows"));
    sqlite3 *db;
    sqlite3_open(dbp, &db);
    assert_int_equal(count(db, "SELECT count(*) FROM events"), 30);
    sqlite3_close(db);

    /* Text removal. */
    snprintf(args, sizeof args, "trim %s --drop-text", dbp);
    assert_int_equal(run_cli(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "removed text from 30 rows"));
    sqlite3_open(dbp, &db);
    assert_int_equal(count(db, "SELECT count(*) FROM events WHERE json LIKE '%secret%'"), 0);
    sqlite3_close(db);

    /* The library: retention in the config trims on the database thread
     * (at open, then every 100 transactions): 7 days leaves days 0..6. */
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.sqlite_path = dbp;
    cfg.retention_max_age_s = 7 * 86400;
    tally_t *h = tally_open(&cfg);
    tally_close(h, NULL);
    sqlite3_open(dbp, &db);
    assert_int_equal(count(db, "SELECT count(*) FROM events WHERE kind='eval'"), 7);
    sqlite3_close(db);

    /* Max rows keeps the newest. */
    snprintf(args, sizeof args, "trim %s --max-rows 3", dbp);
    assert_int_equal(run_cli(args, out, sizeof out), 0);
    sqlite3_open(dbp, &db);
    assert_int_equal(count(db, "SELECT count(*) FROM events"), 3);
    assert_int_equal(count(db, "SELECT count(*) FROM events WHERE kind='run_end'"), 1);
    sqlite3_close(db);
    th_rmrf(dir);
}

static void test_import_idempotent(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("import");
    char dbp[600], file[600], tep[600], s2[600], args[2400], out[4096];
    snprintf(dbp, sizeof dbp, "%s/t.db", dir);
    snprintf(file, sizeof file, "%s/run/events.jsonl", dir);
    snprintf(tep, sizeof tep, "%s/tep.jsonl", dir);
    snprintf(s2, sizeof s2, "%s/seed2.jsonl", dir);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = file;
    tally_t *h = tally_open(&cfg);
    record_mix(h);
    tally_close(h, NULL);
    FILE *f = fopen(tep, "w");
    fputs("{\"kind\":\"run_start\",\"schema\":\"toy/v1\",\"t\":0,\"started_at\":\"2026-11-23T10:00:00Z\","
          "\"host\":{\"name\":\"h\",\"os\":\"linux\",\"arch\":\"x86_64\"},\"backend\":{\"kind\":\"cpu\"},"
          "\"model\":{\"name\":\"tep-model\",\"path\":\"\"},\"config\":{}}\n"
          "{\"kind\":\"eval\",\"phase\":\"serve\",\"t\":3,\"name\":\"request\",\"extra\":{\"model\":\"tep-model\","
          "\"prompt_tokens\":5,\"completion_tokens\":2,\"latency_us\":9}}\n"
          "this line is not json\n"
          "{\"kind\":\"run_end\",\"t\":4,\"ended_at\":\"2026-11-23T10:00:04Z\",\"reason\":\"completed\","
          "\"stats\":{\"requests\":1,\"errors\":0,\"tokens_out\":2}}\n"
          "{\"kind\":\"eval\",\"t\":5,\"na",
          f);
    fclose(f);
    f = fopen(s2, "w");
    fputs("{\"ts\": 1795400000.0, \"tag\": \"step_begin\", \"step\": 1}\n"
          "{\"ts\": 1795400001.5, \"tag\": \"step_end\", \"step\": 1, \"context\": {\"loss\": 2.5}}\n"
          "{\"ts\": 1795400002.0, \"tag\": \"error\", \"type\": \"ValueError\", \"message\": \"nan\"}\n",
          f);
    fclose(f);

    snprintf(args, sizeof args, "import %s %s %s --db %s", dir, tep, s2, dbp);
    /* dir contains all three files; tep and s2 are named twice on purpose:
     * the second reading adds nothing. */
    assert_int_equal(run_cli(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "unparseable 2"));            /* line 3 of tep, twice */
    assert_non_null(strstr(out, "torn last lines 2"));
    assert_non_null(strstr(out, "tep.jsonl:3:"));
    sqlite3 *db;
    sqlite3_open(dbp, &db);
    int64_t rows = count(db, "SELECT count(*) FROM events");
    assert_int_equal(rows, 57 + 3 + 3); /* tally run (run_start+55+run_end), tep 3, TelemetryLogger 3 */
    assert_int_equal(count(db, "SELECT count(*) FROM events WHERE kind='step' AND step=1 AND loss=2.5"), 1);
    assert_int_equal(count(db, "SELECT count(*) FROM events WHERE kind='error' AND name='ValueError'"), 1);
    /* tep's integer t, placed at started_at + t. */
    double want;
    struct tm tm = {0};
    tm.tm_year = 126;
    tm.tm_mon = 10;
    tm.tm_mday = 23;
    tm.tm_hour = 10;
    want = (double)timegm(&tm) + 3;
    char q[200];
    snprintf(q, sizeof q, "SELECT count(*) FROM events WHERE model='tep-model' AND ts=%.1f AND run_id='tep.jsonl'", want);
    assert_int_equal(count(db, q), 1);
    assert_int_equal(count(db, "SELECT requests FROM runs WHERE run_id='tep.jsonl'"), 1);
    sqlite3_close(db);

    /* Once more: nothing added. */
    snprintf(args, sizeof args, "import %s --db %s", dir, dbp);
    assert_int_equal(run_cli(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "imported 0"));
    sqlite3_open(dbp, &db);
    assert_int_equal(count(db, "SELECT count(*) FROM events"), rows);
    sqlite3_close(db);
    th_rmrf(dir);
}

static void assert_refused_unchanged(const char *path, const char *why)
{
    size_t n0, n1;
    char *before = slurp(path, &n0);
    char err[512] = "";
    store *s = store_open(path, STORE_CREATE, err, sizeof err);
    assert_null(s);
    if (!strstr(err, why)) fail_msg("error '%s' does not say '%s'", err, why);
    char args[800], out[2048];
    snprintf(args, sizeof args, "import /dev/null --db %s", path);
    assert_int_equal(run_cli(args, out, sizeof out), 1);
    assert_non_null(strstr(out, why));
    char *after = slurp(path, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, after, n0);
    free(before);
    free(after);
}

static void test_refused(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("refused");
    char p[600];
    sqlite3 *db;

    snprintf(p, sizeof p, "%s/foreign.db", dir);
    sqlite3_open(p, &db);
    sqlite3_exec(db, "CREATE TABLE telemetry(x); INSERT INTO telemetry VALUES(1)", NULL, NULL, NULL);
    sqlite3_close(db);
    assert_refused_unchanged(p, "not a tally database");

    snprintf(p, sizeof p, "%s/newer.db", dir);
    sqlite3_open(p, &db);
    char sql[200];
    snprintf(sql, sizeof sql, "CREATE TABLE events(x); PRAGMA application_id=%d; PRAGMA user_version=99", STORE_APP_ID);
    sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    assert_refused_unchanged(p, "newer schema");

    snprintf(p, sizeof p, "%s/corrupt.db", dir);
    FILE *f = fopen(p, "w");
    for (int i = 0; i < 4096; i++) fputc((i * 7919) & 0xff, f);
    fclose(f);
    assert_refused_unchanged(p, "not a database");

    /* The library: a database it cannot use is a counted warning. */
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.sqlite_path = p;
    tally_t *h = tally_open(&cfg);
    tally_note(h, "x");
    tally_flush(h, 5000);
    tally_counters c;
    tally_get_counters(h, &c);
    assert_int_equal(c.sink_failures, 2);
    tally_close(h, NULL);
    th_rmrf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_equal_jsonl), cmocka_unit_test(test_two_processes),
        cmocka_unit_test(test_retention),        cmocka_unit_test(test_import_idempotent),
        cmocka_unit_test(test_refused),          cmocka_unit_test(test_threads_flush_retention),
        cmocka_unit_test(test_lock_held_past_busy_timeout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
