/*
 * test_fields -- the table of a request's named fields (src/fields.h)
 * reaches everywhere it says it does.
 *
 * Walks the table itself, so a field added there is checked here without
 * a new test: every field and number set through tally_request is in the
 * JSON line's `extra`, in its own column of the database, read back by
 * the row decoders; every field is a --by key; the rollup fields give the same stats from
 * the file, the rollup and the rows.  Then provider and finish_reason end
 * to end: --where, tail, validate.
 */
#include <sqlite3.h>

#include "helpers.h"
#include "record.h"
#include "row.h"

static void value_of(const field_def *f, int i, char *out, size_t n)
{
    snprintf(out, n, "%s-%d", f->key, i % 3);
}

/* Number k's value in request i: distinct and positive. */
/* Field k's value in request i: distinct per field, and meaning something
 * valid together (prompt >= cached + cache-write, completion >= reasoning,
 * latency >= ttft: the totals are given larger values). */
static int64_t number_of(int k, int i)
{
    const char *key = tally_request_numbers[k].key;
    int total = !strcmp(key, "prompt_tokens") || !strcmp(key, "completion_tokens") || !strcmp(key, "latency_us");
    return (total ? 100000 : 1000) * (k + 1) + i;
}

static void record_all_fields(tally_t *h, int n)
{
    char vals[RQ_NLABELS][64];
    for (int i = 0; i < n; i++) {
        tally_request q = {0};
        for (int k = 0; k < N_REQUEST_LABELS; k++) {
            const field_def *f = &tally_request_labels[k];
            value_of(f, i, vals[k], sizeof vals[k]);
            *(const char **)((char *)&q + f->api_off) = vals[k];
        }
        /* Every number non-zero: written without its presence bit. */
        for (int k = 0; k < N_REQUEST_NUMBERS; k++) {
            const number_def *f = &tally_request_numbers[k];
            void *m = (char *)&q + f->api_off;
            if (f->type == FLD_I64) *(int64_t *)m = number_of(k, i);
            else *(double *)m = (double)number_of(k, i) + 0.5;
        }
        tally_request_record(h, &q);
    }
}

/* A fresh directory with e.jsonl and e.db, and a handle writing both. */
static tally_t *open_both(const char *tag, char dir[600], char file[700], char db[700])
{
    snprintf(dir, 600, "%s", th_tmpdir(tag));
    snprintf(file, 700, "%s/e.jsonl", dir);
    snprintf(db, 700, "%s/e.db", dir);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = file;
    cfg.sqlite_path = db;
    return tally_open(&cfg);
}

static void test_every_field_everywhere(void **state)
{
    (void)state;
    char dir[600], file[700], db[700], args[2400], out[1 << 14];
    tally_t *h = open_both("fields", dir, file, db);
    record_all_fields(h, 30);
    tally_close(h, NULL);

    th_lines l;
    assert_int_equal(th_read_lines(file, &l), 0);
    assert_int_equal(l.n, 32);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    sqlite3 *s;
    assert_int_equal(sqlite3_open_v2(db, &s, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    for (int i = 0; i < 30; i++) {
        json_arena_reset(&a);
        const jv *v = th_parse(&a, l.line[1 + i]);
        row_ctx c;
        row_ctx_init(&c, "r");
        row r;
        assert_int_equal(row_from_json(v, &c, &r), 1);
        const char *id = jv_str(jv_get(v, "id"));
        assert_non_null(id);
        for (int k = 0; k < N_REQUEST_LABELS; k++) {
            const field_def *f = &tally_request_labels[k];
            char want[64], path[96], sql[256];
            value_of(f, i, want, sizeof want);
            /* In the line's extra. */
            snprintf(path, sizeof path, "extra.%s", f->key);
            TH_STR(v, path, want);
            /* Read back from JSON into its row member. */
            const sv *got = FIELD_CSV(&r, f);
            assert_non_null(got->p);
            assert_int_equal(got->n, strlen(want));
            assert_memory_equal(got->p, want, got->n);
            /* In its own column. */
            snprintf(sql, sizeof sql, "SELECT %s FROM events WHERE id = ?1", f->key);
            sqlite3_stmt *st;
            assert_int_equal(sqlite3_prepare_v2(s, sql, -1, &st, NULL), SQLITE_OK);
            sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
            assert_int_equal(sqlite3_step(st), SQLITE_ROW);
            assert_string_equal((const char *)sqlite3_column_text(st, 0), want);
            sqlite3_finalize(st);
        }
        for (int k = 0; k < N_REQUEST_NUMBERS; k++) {
            const number_def *f = &tally_request_numbers[k];
            double want = (double)number_of(k, i) + (f->type == FLD_I64 ? 0 : 0.5);
            char path[96], sql[256];
            /* In the line's extra. */
            snprintf(path, sizeof path, "extra.%s", f->key);
            const jv *x = th_get(v, path);
            if (!x) fail_msg("%s missing in %s", path, l.line[1 + i]);
            assert_true(jv_num(x, 0) == want);
            /* Read back into its row member, with its bit. */
            assert_true(r.has & f->rowbit);
            const void *m = (const char *)&r + f->row_off;
            assert_true((f->row_type == FLD_I64 ? (double)*(const int64_t *)m : *(const double *)m) == want);
            /* In its own column. */
            snprintf(sql, sizeof sql, "SELECT %s FROM events WHERE id = ?1", f->key);
            sqlite3_stmt *st;
            assert_int_equal(sqlite3_prepare_v2(s, sql, -1, &st, NULL), SQLITE_OK);
            sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
            assert_int_equal(sqlite3_step(st), SQLITE_ROW);
            assert_true(sqlite3_column_double(st, 0) == want);
            sqlite3_finalize(st);
        }
    }
    sqlite3_close(s);
    json_arena_free(&a);
    th_lines_free(&l);

    /* Every field is a --by key; the file, the rollup and the rows agree. */
    for (int k = 0; k < N_REQUEST_LABELS; k++) {
        const field_def *f = &tally_request_labels[k];
        static char from_file[1 << 14], from_db[1 << 14], from_rows[1 << 14];
        snprintf(args, sizeof args, "stats --csv --by %s %s", f->key, file);
        assert_int_equal(th_run_cli(args, from_file, sizeof from_file), 0);
        snprintf(args, sizeof args, "stats --csv --by %s %s", f->key, db);
        assert_int_equal(th_run_cli(args, from_db, sizeof from_db), 0);
        snprintf(args, sizeof args, "stats --csv --scan --by %s %s", f->key, db);
        assert_int_equal(th_run_cli(args, from_rows, sizeof from_rows), 0);
        char want[64];
        value_of(f, 0, want, sizeof want);
        if (!strstr(from_file, want)) fail_msg("--by %s: %s not in\n%s", f->key, want, from_file);
        assert_string_equal(from_file, from_db);
        assert_string_equal(from_file, from_rows);
    }
    snprintf(args, sizeof args, "validate %s", file);
    assert_int_equal(th_run_cli(args, out, sizeof out), 0);
    th_rmrf(dir);
}

static void test_provider_and_finish_reason(void **state)
{
    (void)state;
    char dir[600], file[700], db[700], args[2400];
    static char out[1 << 15];
    tally_t *h = open_both("provider", dir, file, db);
    static const char *const providers[] = {"openai", "vllm", "anthropic"};
    static const char *const reasons[] = {"stop", "length", "stop", "tool_calls"};
    int length = 0, openai = 0;
    for (int i = 0; i < 40; i++) {
        tally_request q = {0};
        q.model = "m";
        q.provider = providers[i % 3];
        q.finish_reason = reasons[i % 4];
        q.completion_tokens = 7;
        q.latency_us = 100;
        length += i % 4 == 1;
        openai += i % 3 == 0;
        tally_request_record(h, &q);
    }
    tally_close(h, NULL);
    for (int src = 0; src < 2; src++) {
        snprintf(args, sizeof args, "stats --json --where finish_reason=length %s", src ? db : file);
        assert_int_equal(th_run_cli(args, out, sizeof out), 0);
        char want[64];
        snprintf(want, sizeof want, "\"requests\":%d,", length);
        if (!strstr(out, want)) fail_msg("%s: want %s in %s", args, want, out);
        snprintf(args, sizeof args, "stats --json --by provider %s", src ? db : file);
        assert_int_equal(th_run_cli(args, out, sizeof out), 0);
        snprintf(want, sizeof want, "\"provider\":\"openai\",\"requests\":%d,", openai);
        if (!strstr(out, want)) fail_msg("%s: want %s in %s", args, want, out);
    }
    /* The last line is run_end; the one before, a request. */
    snprintf(args, sizeof args, "tail -n 2 %s", file);
    assert_int_equal(th_run_cli(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "provider=openai"));
    assert_non_null(strstr(out, "finish_reason=tool_calls"));

    /* validate: a named field of the wrong type is a problem. */
    char bad[700];
    snprintf(bad, sizeof bad, "%s/bad.jsonl", dir);
    FILE *f = fopen(bad, "w");
    fprintf(f, "{\"kind\":\"run_start\",\"t\":0,\"started_at\":\"x\",\"host\":{},\"backend\":{\"kind\":\"c\"},"
               "\"model\":{\"name\":\"m\"}}\n"
               "{\"kind\":\"eval\",\"t\":1,\"phase\":\"serve\",\"name\":\"request\",\"extra\":{\"model\":\"m\","
               "\"prompt_tokens\":1,\"completion_tokens\":1,\"latency_us\":1,\"provider\":5}}\n");
    fclose(f);
    snprintf(args, sizeof args, "validate %s", bad);
    assert_int_equal(th_run_cli(args, out, sizeof out), 1);
    assert_non_null(strstr(out, "extra.provider must be a string"));
    th_rmrf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_field_everywhere),
        cmocka_unit_test(test_provider_and_finish_reason),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
