/*
 * test_rollup -- the database's per-minute rollup and its time-ordered
 * rows: the cell and sketch encodings round-trip and refuse bad bytes;
 * stats from the rollup equal stats from the rows and from the JSONL file
 * for time ranges cut anywhere; more than 1024 events in one microsecond
 * spill over and are still found again (import twice adds nothing); two
 * writers in the same microseconds both land; a v1 database is migrated;
 * retention leaves the rollup equal to the rows.
 */
#include <math.h>
#include <sqlite3.h>
#include <time.h>
#include <unistd.h>

#include "agg.h"
#include "helpers.h"
#include "rollup.h"
#include "sketch.h"
#include "store.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
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

static int64_t db_count(const char *path, const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    int64_t n = count(db, sql);
    sqlite3_close(db);
    return n;
}

/* ---- encodings ---------------------------------------------------------------- */

static void assert_sketch_equal(const sketch *a, const sketch *b)
{
    assert_int_equal(a->n, b->n);
    assert_int_equal(a->low, b->low);
    if (!a->n) return;
    assert_true(a->min == b->min && a->max == b->max && a->sum == b->sum);
    for (double q = 0; q <= 1.0; q += 0.01) assert_true(sketch_quantile(a, q) == sketch_quantile(b, q));
}

static void test_sketch_codec(void **state)
{
    (void)state;
    for (int round = 0; round < 50; round++) {
        sketch s, t;
        sketch_init(&s);
        sketch_init(&t);
        int n = round == 0 ? 0 : (int)(rnd() * 5000);
        for (int i = 0; i < n; i++) sketch_add(&s, round % 3 == 0 ? rnd() * 0.9 : exp(rnd() * 22));
        buf b;
        buf_init(&b, 1 << 20);
        sketch_encode(&s, &b);
        assert_int_equal(sketch_decode_merge(&t, (const unsigned char *)b.p, b.len), (long)b.len);
        assert_sketch_equal(&s, &t);
        /* Every proper prefix is refused and leaves the sketch as it was. */
        for (size_t cut = 0; cut < b.len; cut++) {
            sketch u;
            sketch_init(&u);
            sketch_add(&u, 42);
            if (sketch_decode_merge(&u, (const unsigned char *)b.p, cut) >= 0 && cut) fail_msg("prefix %zu accepted", cut);
            assert_int_equal(u.n, 1);
            sketch_free(&u);
        }
        /* Decoding merges: twice is the sketch merged with itself. */
        sketch two;
        sketch_init(&two);
        sketch_merge(&two, &s);
        sketch_merge(&two, &s);
        assert_int_equal(sketch_decode_merge(&t, (const unsigned char *)b.p, b.len), (long)b.len);
        assert_sketch_equal(&two, &t);
        buf_free(&b);
        sketch_free(&s);
        sketch_free(&t);
        sketch_free(&two);
    }
    /* A count that does not add up is refused. */
    sketch s;
    sketch_init(&s);
    sketch_add(&s, 10);
    buf b;
    buf_init(&b, 1024);
    sketch_encode(&s, &b);
    b.p[0] = 2; /* n = 2, one value in the buckets */
    assert_int_equal(sketch_decode_merge(&s, (const unsigned char *)b.p, b.len), -1);
    buf_free(&b);
    sketch_free(&s);
}

static void random_row(row *r, double ts)
{
    static const char *models[] = {"a", "bb", "ccc"};
    static const char *reasons[] = {"web_failed", "cap"};
    row_clear(r);
    r->ts = ts;
    r->has = ROW_TS;
    double k = rnd();
    if (k < 0.7) {
        r->kind = SV_LIT("eval");
        r->name = SV_LIT("request");
        r->phase = SV_LIT("serve");
        const char *m = models[(int)(rnd() * 3)];
        r->model = (sv){m, strlen(m)};
        r->prompt = (int64_t)(rnd() * 1000);
        r->completion = (int64_t)(rnd() * 300) + 1;
        r->latency_us = 1000 + floor(rnd() * 1e6);
        r->ok = rnd() < 0.9;
        r->has |= ROW_OK | ROW_PROMPT | ROW_COMPLETION | ROW_LATENCY;
        if (rnd() < 0.5) { r->ttft_us = floor(rnd() * 1000); r->has |= ROW_TTFT; }
        if (rnd() < 0.5) { r->cost_nusd = (int64_t)(rnd() * 1e6); r->has |= ROW_COST; }
        if (rnd() < 0.5) { r->energy_j = rnd() * 10; r->has |= ROW_ENERGY; }
        if (rnd() < 0.2) { const char *d = reasons[rnd() < 0.5]; r->degraded = (sv){d, strlen(d)}; }
    } else if (k < 0.9) {
        r->kind = SV_LIT("step");
        r->phase = SV_LIT("train");
        r->loss = rnd() * 4;
        r->wall_us = 1000 + floor(rnd() * 5000);
        r->step_tokens = 4096;
        r->has |= ROW_LOSS | ROW_WALL | ROW_STEP_TOKENS;
    } else {
        r->kind = SV_LIT("error");
        r->phase = rnd() < 0.5 ? SV_LIT("serve") : SV_LIT("train");
    }
}

static void test_cell_codec(void **state)
{
    (void)state;
    for (int round = 0; round < 20; round++) {
        agg_cell c, d;
        agg_cell_init(&c);
        agg_cell_init(&d);
        for (int i = 0; i < round * 50; i++) {
            row r;
            random_row(&r, 1795000000 + i);
            agg_cell_add(&c, &r);
        }
        buf b, b2;
        buf_init(&b, 1 << 20);
        buf_init(&b2, 1 << 20);
        agg_cell_encode(&c, &b);
        assert_int_equal(agg_cell_decode_merge(&d, b.p, b.len), 0);
        agg_cell_encode(&d, &b2);
        assert_int_equal(b.len, b2.len);
        assert_memory_equal(b.p, b2.p, b.len);
        assert_int_equal(c.requests, d.requests);
        assert_int_equal(c.cost_nusd, d.cost_nusd);
        assert_sketch_equal(&c.latency, &d.latency);
        assert_sketch_equal(&c.step_time, &d.step_time);
        for (size_t cut = 0; cut < b.len; cut += 1 + b.len / 97) {
            agg_cell e;
            agg_cell_init(&e);
            assert_int_equal(agg_cell_decode_merge(&e, b.p, cut), -1);
            assert_int_equal(e.events, 0);
            agg_cell_free(&e);
        }
        buf_free(&b);
        buf_free(&b2);
        agg_cell_free(&c);
        agg_cell_free(&d);
    }
}

/* ---- stats three ways ------------------------------------------------------------ */

/* Ten minutes of events from 2026-11-24T00:00:00Z, at odd offsets, with a
 * run_start so that some lines are not counted. */
#define T0 1795478400.0

static void write_events(const char *path, int n)
{
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"kind\":\"run_start\",\"t\":0,\"ts\":%.6f,\"run_id\":\"r1\",\"model\":{\"name\":\"m\"}}\n", T0);
    for (int i = 0; i < n; i++) {
        row r;
        double ts = T0 + floor(rnd() * 600e6) / 1e6;
        random_row(&r, ts);
        if (row_is_request(&r)) {
            fprintf(f,
                    "{\"kind\":\"eval\",\"ts\":%.6f,\"phase\":\"serve\",\"name\":\"request\",\"extra\":{\"model\":\"%.*s\","
                    "\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"latency_us\":%.0f,\"ok\":%s",
                    ts, (int)r.model.n, r.model.p, (long long)r.prompt, (long long)r.completion, r.latency_us,
                    r.ok ? "true" : "false");
            if (r.has & ROW_TTFT) fprintf(f, ",\"ttft_us\":%.0f", r.ttft_us);
            if (r.has & ROW_COST) fprintf(f, ",\"cost_nusd\":%lld", (long long)r.cost_nusd);
            if (r.has & ROW_ENERGY) fprintf(f, ",\"energy_j\":%.17g", r.energy_j);
            if (r.degraded.p) fprintf(f, ",\"degraded\":\"%.*s\"", (int)r.degraded.n, r.degraded.p);
            fprintf(f, ",\"engine\":\"%s\"}}\n", i % 2 ? "vllm" : "sglang");
        } else if (SV_IS(r.kind, "step")) {
            fprintf(f, "{\"kind\":\"step\",\"ts\":%.6f,\"phase\":\"train\",\"step\":%d,\"loss\":%.17g,\"wall_us\":%.0f,"
                       "\"tokens\":4096}\n",
                    ts, i, r.loss, r.wall_us);
        } else {
            fprintf(f, "{\"kind\":\"error\",\"ts\":%.6f,\"phase\":\"%.*s\",\"type\":\"E\",\"message\":\"m%d\"}\n", ts,
                    (int)r.phase.n, r.phase.p, i % 3);
        }
    }
    fclose(f);
}

/* Fails with the first line where two outputs differ. */
static void assert_same_text(const char *what, const char *a, const char *b)
{
    if (!strcmp(a, b)) return;
    const char *la = a, *lb = b;
    while (*la && *la == *lb) {
        if (*la == '\n') {
            a = la + 1;
            b = lb + 1;
        }
        la++;
        lb++;
    }
    fail_msg("%s differ at:\n%.*s\n%.*s", what, (int)strcspn(a, "\n"), a, (int)strcspn(b, "\n"), b);
}

static void run_ok(const char *args, char *out, size_t n)
{
    int rc = th_run_cli(args, out, n);
    if (rc != 0) fail_msg("tally %s: exit %d: %s", args, rc, out);
}

/* `tally stats ARGS --csv` on the file, the database, and the database
 * with --scan: all three the same. */
static void same_three_ways(const char *file, const char *db, const char *args)
{
    static char a[1 << 18], b[1 << 18], c[1 << 18];
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "stats --csv %s %s", args, file);
    run_ok(cmd, a, sizeof a);
    snprintf(cmd, sizeof cmd, "stats --csv %s %s", args, db);
    run_ok(cmd, b, sizeof b);
    snprintf(cmd, sizeof cmd, "stats --csv --scan %s %s", args, db);
    run_ok(cmd, c, sizeof c);
    char what[1200];
    snprintf(what, sizeof what, "stats %s: file and rollup", args);
    assert_same_text(what, a, b);
    snprintf(what, sizeof what, "stats %s: rollup and rows", args);
    assert_same_text(what, b, c);
    /* Something to compare: the header and at least one group. */
    assert_non_null(strchr(strchr(a, '\n') + 1, '\n'));
}

static void test_three_ways(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("threeways");
    char file[600], db[600], args[1600];
    static char out[1 << 18];
    snprintf(file, sizeof file, "%s/e.jsonl", dir);
    snprintf(db, sizeof db, "%s/t.db", dir);
    write_events(file, 20000);
    snprintf(args, sizeof args, "import %s --db %s", file, db);
    run_ok(args, out, sizeof out);
    assert_non_null(strstr(out, "imported 20001"));
    /* The rollup has one cell per minute and key, far fewer than rows. */
    int64_t cells = db_count(db, "SELECT count(*) FROM rollup");
    assert_true(cells > 10 && cells < 2000);
    assert_int_equal(db_count(db, "SELECT sum(events) FROM rollup"), 20001);

    const char *by[] = {"--by model,engine", "--by ok,degraded", "--by hour,kind", "--by phase --where model=bb",
                        "--by model --where ok=false --where engine!=vllm", "--by run"};
    /* Cut inside minutes, on minute boundaries, both, and within one minute. */
    const double cuts[][2] = {{0, 0}, {61.25, 0}, {0, 479.000001}, {120, 300}, {125.5, 126.25}, {59.999999, 540}};
    for (size_t i = 0; i < sizeof by / sizeof by[0]; i++) {
        for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
            char a[1200];
            int n = snprintf(a, sizeof a, "%s", by[i]);
            if (cuts[k][0]) n += snprintf(a + n, sizeof a - (size_t)n, " --since 2026-11-24T00:%02d:%09.6fZ",
                                          (int)(cuts[k][0] / 60), fmod(cuts[k][0], 60));
            if (cuts[k][1]) snprintf(a + n, sizeof a - (size_t)n, " --until 2026-11-24T00:%02d:%09.6fZ",
                                     (int)(cuts[k][1] / 60), fmod(cuts[k][1], 60));
            same_three_ways(file, db, a);
        }
    }
    /* Keys the rollup does not have are answered from rows (no cells). */
    snprintf(args, sizeof args, "stats --json --by error %s", db);
    run_ok(args, out, sizeof out);
    assert_non_null(strstr(out, "\"rollup_cells\":0"));
    snprintf(args, sizeof args, "stats --json --by model %s", db);
    run_ok(args, out, sizeof out);
    assert_null(strstr(out, "\"rollup_cells\":0"));
    th_rmrf(dir);
}

/* ---- placement ------------------------------------------------------------------- */

static void test_spill_and_dedup(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("spill");
    char file[600], db[600], args[1600];
    static char out[1 << 18];
    snprintf(file, sizeof file, "%s/seed2.jsonl", dir);
    snprintf(db, sizeof db, "%s/t.db", dir);
    /* TelemetryLogger with whole-second times: 3000 lines in one microsecond,
     * then one a second later. */
    FILE *f = fopen(file, "w");
    for (int i = 0; i < 3000; i++)
        fprintf(f, "{\"ts\": 1795478400, \"tag\": \"step_end\", \"step\": %d, \"context\": {\"loss\": %d.5}}\n", i, i);
    fprintf(f, "{\"ts\": 1795478401, \"tag\": \"step_end\", \"step\": 3000, \"context\": {\"loss\": 0.5}}\n");
    fclose(f);
    snprintf(args, sizeof args, "import %s --db %s", file, db);
    run_ok(args, out, sizeof out);
    assert_non_null(strstr(out, "imported 3001"));
    assert_int_equal(db_count(db, "SELECT count(*) FROM events"), 3001);
    /* They took contiguous slots from the second's first one. */
    assert_int_equal(db_count(db, "SELECT min(seq) FROM events"), (int64_t)1795478400000000LL * 1024);
    assert_int_equal(db_count(db, "SELECT max(seq) - min(seq) FROM events WHERE ts = 1795478400"), 2999);
    /* Found again, every one of them. */
    run_ok(args, out, sizeof out);
    assert_non_null(strstr(out, "imported 0, duplicates skipped 3001"));
    /* A range ending at that second includes the spilled events. */
    same_three_ways(file, db, "--by kind --until 2026-11-24T00:00:00Z");
    snprintf(args, sizeof args, "stats --json --until 2026-11-24T00:00:00Z %s", db);
    run_ok(args, out, sizeof out);
    assert_non_null(strstr(out, "\"steps\":3000"));
    th_rmrf(dir);
}

/* Two writers inserting events of the same microseconds, batch after
 * batch: every event lands once, in slots of its own time. */
static void test_same_microseconds(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("samemicro");
    char db[600], err[512];
    snprintf(db, sizeof db, "%s/t.db", dir);
    store *a = store_open(db, STORE_CREATE, err, sizeof err);
    store *b = store_open(db, STORE_CREATE, err, sizeof err);
    assert_non_null(a);
    assert_non_null(b);
    enum { N = 200 };
    row rows[N];
    char ids[2][N][32];
    for (int w = 0; w < 2; w++) {
        for (int round = 0; round < 3; round++) {
            store *s = (w + round) % 2 ? b : a;
            for (int i = 0; i < N; i++) {
                random_row(&rows[i], T0 + (double)(i / 50) * 1e-6 + round * 1e-3);
                snprintf(ids[w][i], 32, "w%d-r%d-%d", w, round, i);
                rows[i].id = (sv){ids[w][i], strlen(ids[w][i])};
                rows[i].json = SV_LIT("{}");
            }
            assert_int_equal(store_begin(s), 0);
            assert_int_equal(store_insert_rows(s, rows, N, 0, NULL), 0);
            assert_int_equal(store_commit(s), 0);
        }
    }
    store_close(a);
    store_close(b);
    assert_int_equal(db_count(db, "SELECT count(*) FROM events"), 2 * 3 * N);
    assert_int_equal(db_count(db, "SELECT count(DISTINCT id) FROM events"), 2 * 3 * N);
    /* Each event in a slot of its own microsecond (none spilled: 100 per us). */
    assert_int_equal(db_count(db, "SELECT count(*) FROM events WHERE seq / 1024 != CAST(round(ts * 1e6) AS INTEGER)"), 0);
    assert_int_equal(db_count(db, "SELECT sum(events) FROM rollup"), 2 * 3 * N);
    th_rmrf(dir);
}

/* ---- migration and retention ----------------------------------------------------------- */

static void test_migrate_v1(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("migrate");
    char db[600], file[600], args[1600];
    snprintf(db, sizeof db, "%s/v1.db", dir);
    snprintf(file, sizeof file, "%s/e.jsonl", dir);
    write_events(file, 2000);
    /* A v1 database as tally 0.1 wrote it: rows in arrival order, four
     * indexes, step times only in the JSON. */
    sqlite3 *s;
    assert_int_equal(sqlite3_open(db, &s), SQLITE_OK);
    char sql[4096];
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; CREATE TABLE events(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
             " ts REAL, run_id TEXT, kind TEXT NOT NULL, phase TEXT, name TEXT, model TEXT, engine TEXT, route TEXT,"
             " principal_id TEXT, request_id TEXT, ok INTEGER, error TEXT, degraded TEXT, prompt_tokens INTEGER,"
             " cached_tokens INTEGER, cache_write_tokens INTEGER, completion_tokens INTEGER, reasoning_tokens INTEGER,"
             " latency_us INTEGER, ttft_us INTEGER, cost_nusd INTEGER, energy_j REAL, gpu_util_pct REAL,"
             " step INTEGER, loss REAL, text TEXT, json TEXT NOT NULL);"
             "CREATE INDEX events_ts ON events(ts); CREATE INDEX events_model_ts ON events(model, ts);"
             "CREATE INDEX events_engine_ts ON events(engine, ts);"
             "CREATE TABLE runs(run_id TEXT PRIMARY KEY, phase TEXT, started_at TEXT, ended_at TEXT, reason TEXT,"
             " host TEXT, backend TEXT, model TEXT, config TEXT, requests INTEGER, errors INTEGER, tokens_out INTEGER,"
             " events INTEGER, dropped INTEGER, final_step INTEGER, final_loss REAL, start_ts REAL, end_ts REAL);"
             "PRAGMA application_id=%d; PRAGMA user_version=1;",
             STORE_APP_ID);
    assert_int_equal(sqlite3_exec(s, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(s);
    /* Filled the v1 way: through the v1 columns, from the same file. */
    assert_int_equal(sqlite3_open(db, &s), SQLITE_OK);
    th_lines l;
    assert_int_equal(th_read_lines(file, &l), 0);
    json_arena ar;
    json_arena_init(&ar, 1 << 20);
    row_ctx ctx;
    row_ctx_init(&ctx, "e.jsonl");
    sqlite3_stmt *ins;
    assert_int_equal(sqlite3_prepare_v2(s,
                                        "INSERT INTO events(id, ts, run_id, kind, phase, name, model, engine, ok,"
                                        " prompt_tokens, completion_tokens, latency_us, ttft_us, cost_nusd, energy_j,"
                                        " step, loss, degraded, json) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                        -1, &ins, NULL),
                     SQLITE_OK);
    sqlite3_exec(s, "BEGIN", NULL, NULL, NULL);
    {
        /* The run's start first, as its writer knew it: steps and errors
         * carry the run's model as the file's reader gives it them. */
        row r0;
        row_from_json(th_parse(&ar, l.line[0]), &ctx, &r0);
    }
    for (size_t i = l.n; i-- > 0;) { /* arrival order unlike time order */
        json_arena_reset(&ar);
        row r;
        row_from_json(th_parse(&ar, l.line[i]), &ctx, &r);
        char id[32];
        snprintf(id, sizeof id, "v1-%zu", i);
        sqlite3_bind_text(ins, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(ins, 2, r.ts);
        sqlite3_bind_text(ins, 3, r.run_id.p, (int)r.run_id.n, SQLITE_TRANSIENT);
        sqlite3_bind_text(ins, 4, r.kind.p, (int)r.kind.n, SQLITE_TRANSIENT);
#define BS(i, f) if (r.f.p) sqlite3_bind_text(ins, i, r.f.p, (int)r.f.n, SQLITE_TRANSIENT); else sqlite3_bind_null(ins, i)
#define BI(i, bit, v) if (r.has & bit) sqlite3_bind_int64(ins, i, (int64_t)(v)); else sqlite3_bind_null(ins, i)
#define BD(i, bit, v) if (r.has & bit) sqlite3_bind_double(ins, i, v); else sqlite3_bind_null(ins, i)
        BS(5, phase);
        BS(6, name);
        BS(7, model);
        BS(8, engine);
        BI(9, ROW_OK, r.ok);
        BI(10, ROW_PROMPT, r.prompt);
        BI(11, ROW_COMPLETION, r.completion);
        BI(12, ROW_LATENCY, r.latency_us);
        BI(13, ROW_TTFT, r.ttft_us);
        BI(14, ROW_COST, r.cost_nusd);
        BD(15, ROW_ENERGY, r.energy_j);
        BI(16, ROW_STEP, r.step);
        BD(17, ROW_LOSS, r.loss);
        BS(18, degraded);
        sqlite3_bind_text(ins, 19, l.line[i], -1, SQLITE_TRANSIENT);
        assert_int_equal(sqlite3_step(ins), SQLITE_DONE);
        sqlite3_reset(ins);
    }
    sqlite3_exec(s, "COMMIT", NULL, NULL, NULL);
    sqlite3_finalize(ins);
    sqlite3_close(s);
    json_arena_free(&ar);
    th_lines_free(&l);

    /* Read as v1 (no rollup, rows by ts) before any writer touches it. */
    static char v1out[1 << 18], v2out[1 << 18], fout[1 << 18];
    snprintf(args, sizeof args, "stats --csv --by model,kind %s", db);
    run_ok(args, v1out, sizeof v1out);
    assert_int_equal(db_count(db, "PRAGMA user_version"), 1);
    /* Opening for writing migrates: v2, rows in time order, a rollup. */
    char err[512];
    store *st = store_open(db, STORE_CREATE, err, sizeof err);
    if (!st) fail_msg("%s", err);
    store_close(st);
    assert_int_equal(db_count(db, "PRAGMA user_version"), STORE_VERSION);
    assert_int_equal(db_count(db, "SELECT count(*) FROM events"), 2001);
    assert_int_equal(db_count(db, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'events_%'"), 0);
    assert_int_equal(db_count(db, "SELECT sum(events) FROM rollup"), 2001);
    assert_int_equal(db_count(db, "SELECT count(*) FROM events WHERE kind='step' AND wall_us IS NOT NULL"),
                     db_count(db, "SELECT count(*) FROM events WHERE kind='step'"));
    run_ok(args, v2out, sizeof v2out);
    snprintf(args, sizeof args, "stats --csv --by model,kind %s", file);
    run_ok(args, fout, sizeof fout);
    assert_same_text("v1 and v2", v1out, v2out);
    assert_same_text("file and v2", fout, v2out);
    th_rmrf(dir);
}

/* v2 -> v3: a database without the newer named-field columns is read as
 * it is, then given them when opened for writing; new rows fill them. */
static void test_migrate_v2(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("migv2");
    char file[600], db[600], args[1600], sql[512];
    static char before[1 << 18], after[1 << 18];
    snprintf(file, sizeof file, "%s/e.jsonl", dir);
    snprintf(db, sizeof db, "%s/t.db", dir);
    write_events(file, 500);
    snprintf(args, sizeof args, "import %s --db %s", file, db);
    run_ok(args, before, sizeof before);
    /* Make it the v2 layout: no provider, finish_reason, provider_request_id,
     * prompt_version columns. */
    sqlite3 *s;
    assert_int_equal(sqlite3_open(db, &s), SQLITE_OK);
    static const char *const newer[] = {"provider", "finish_reason", "provider_request_id", "prompt_version"};
    for (int i = 0; i < 4; i++) {
        snprintf(sql, sizeof sql, "ALTER TABLE events DROP COLUMN %s", newer[i]);
        assert_int_equal(sqlite3_exec(s, sql, NULL, NULL, NULL), SQLITE_OK);
    }
    assert_int_equal(sqlite3_exec(s, "ALTER TABLE rollup DROP COLUMN provider; ALTER TABLE rollup DROP COLUMN "
                                     "finish_reason; PRAGMA user_version=2", NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(s);
    snprintf(args, sizeof args, "stats --csv --by model,kind %s", db);
    run_ok(args, before, sizeof before);
    assert_int_equal(db_count(db, "PRAGMA user_version"), 2);
    char err[512];
    store *st = store_open(db, STORE_CREATE, err, sizeof err);
    if (!st) fail_msg("%s", err);
    store_close(st);
    assert_int_equal(db_count(db, "PRAGMA user_version"), 3);
    assert_int_equal(db_count(db, "SELECT count(*) FROM pragma_table_info('events') WHERE name='provider'"), 1);
    assert_int_equal(db_count(db, "SELECT count(*) FROM pragma_table_info('rollup') WHERE name='finish_reason'"), 1);
    run_ok(args, after, sizeof after);
    assert_same_text("v2 and v3", before, after);
    th_rmrf(dir);
}

static void test_trim_keeps_rollup(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("trimroll");
    char file[600], db[600], args[1600];
    static char out[1 << 18];
    snprintf(file, sizeof file, "%s/e.jsonl", dir);
    snprintf(db, sizeof db, "%s/t.db", dir);
    write_events(file, 5000);
    snprintf(args, sizeof args, "import %s --db %s", file, db);
    run_ok(args, out, sizeof out);
    /* Delete everything before 00:04:30.5 (mid-minute), by the library's
     * trim (the CLI's --older-than counts back from now). */
    char err[512];
    store *s = store_open(db, 0, err, sizeof err);
    assert_non_null(s);
    int64_t older = db_count(db, "SELECT count(*) FROM events WHERE ts < 1795478670.5");
    assert_true(older > 1000);
    assert_int_equal(store_trim(s, T0 + 270.5, 0), older);
    store_close(s);
    assert_int_equal(db_count(db, "SELECT count(*) FROM events WHERE ts < 1795478670.5"), 0);
    assert_int_equal(db_count(db, "SELECT sum(events) FROM rollup"), db_count(db, "SELECT count(*) FROM events"));
    static char b[1 << 18], c[1 << 18];
    const char *q[] = {"--by model,ok", "--by kind --since 2026-11-24T00:04:00Z", "--by hour"};
    for (int i = 0; i < 3; i++) {
        snprintf(args, sizeof args, "stats --csv %s %s", q[i], db);
        run_ok(args, b, sizeof b);
        snprintf(args, sizeof args, "stats --csv --scan %s %s", q[i], db);
        run_ok(args, c, sizeof c);
        assert_same_text(q[i], b, c);
    }
    /* Keep the newest 100 rows: the rollup follows. */
    snprintf(args, sizeof args, "trim %s --max-rows 100", db);
    run_ok(args, out, sizeof out);
    assert_int_equal(db_count(db, "SELECT count(*) FROM events"), 100);
    assert_int_equal(db_count(db, "SELECT sum(events) FROM rollup"), 100);
    snprintf(args, sizeof args, "stats --csv --by model %s", db);
    run_ok(args, b, sizeof b);
    snprintf(args, sizeof args, "stats --csv --scan --by model %s", db);
    run_ok(args, c, sizeof c);
    assert_same_text("after --max-rows", b, c);
    th_rmrf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sketch_codec),      cmocka_unit_test(test_cell_codec),
        cmocka_unit_test(test_three_ways),        cmocka_unit_test(test_spill_and_dedup),
        cmocka_unit_test(test_same_microseconds), cmocka_unit_test(test_migrate_v1), cmocka_unit_test(test_migrate_v2),
        cmocka_unit_test(test_trim_keeps_rollup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
