/* source -- see source.h. */
#include "source.h"

#include "encode.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "store.h"
#include "util.h"

#define MAX_LINE ((size_t)16 << 20)
#define MAX_REPORTED 10

static const char sqlite_magic[16] = "SQLite format 3";

int source_kind(const char *path, char *err, size_t errlen)
{
    if (!strcmp(path, "-")) return 0;
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: no such file or directory", path);
        return -1;
    }
    if (S_ISDIR(st.st_mode)) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read %s", path);
        return -1;
    }
    char head[16] = {0};
    size_t n = fread(head, 1, 16, f);
    fclose(f);
    if (n < 16 || memcmp(head, sqlite_magic, 16) != 0) return 0;
    sqlite3 *db;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open database %s: %s", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return -1;
    }
    int kind = -1;
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db,
                           "SELECT (SELECT application_id FROM pragma_application_id),"
                           " (SELECT count(*) FROM sqlite_master WHERE type='table' AND name='telemetry')",
                           -1, &q, NULL) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW) {
        if (sqlite3_column_int64(q, 0) == STORE_APP_ID) kind = 1;
        else if (sqlite3_column_int64(q, 1) > 0) kind = 2;
        else snprintf(err, errlen, "%s is neither a tally nor an OpenJarvis database", path);
    } else {
        snprintf(err, errlen, "cannot read database %s: %s", path, sqlite3_errmsg(db));
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    return kind;
}

/* ---- JSONL ----------------------------------------------------------------- */

typedef struct jstate {
    char run_id[256];
    double started;
    int have_started;
    int64_t begin_step;
    double begin_step_ts;
    int have_begin;
} jstate;

static const char *str_of(const jv *v) { return v && v->type == JV_STR ? v->s : NULL; }

static int num(const jv *v, double *out)
{
    if (!v || v->type != JV_NUM) return 0;
    *out = v->num;
    return 1;
}

static int inum(const jv *v, int64_t *out)
{
    if (!v || v->type != JV_NUM) return 0;
    *out = jv_int(v, 0);
    return 1;
}

/* Fills e from a parsed line; 0 when the line is no event to count. */
static int sev_from_json(const jv *v, jstate *js, sev *e)
{
    memset(e, 0, sizeof *e);
    e->json = v;
    e->run_id = js->run_id;
    const char *kind = str_of(JV_GET(v, "kind"));
    const char *tag = str_of(JV_GET(v, "tag"));
    double x;
    if (num(JV_GET(v, "ts"), &e->ts)) e->has |= SEV_TS;
    if (kind) {
        e->kind = kind;
        e->phase = str_of(JV_GET(v, "phase"));
        e->name = str_of(JV_GET(v, "name"));
        if (!strcmp(kind, "run_end")) e->reason = str_of(JV_GET(v, "reason"));
        if (!strcmp(kind, "run_start")) {
            const jv *m = JV_GET(v, "model");
            e->run_model = m && m->type == JV_OBJ ? str_of(JV_GET(m, "name")) : str_of(m);
            const char *rid = str_of(JV_GET(v, "run_id"));
            if (rid) snprintf(js->run_id, sizeof js->run_id, "%s", rid);
            if (e->has & SEV_TS) {
                js->started = e->ts;
                js->have_started = 1;
            } else if (iso8601_parse(str_of(JV_GET(v, "started_at")), &x) == 0) {
                js->started = x;
                js->have_started = 1;
            }
        }
        if (!(e->has & SEV_TS) && js->have_started && num(JV_GET(v, "t"), &x)) {
            e->ts = js->started + x;
            e->has |= SEV_TS;
        }
        const jv *ex = JV_GET(v, "extra");
        if (!strcmp(kind, "eval") && e->name && !strcmp(e->name, "request") && ex && ex->type == JV_OBJ) {
            e->is_request = 1;
            e->model = str_of(JV_GET(ex, "model"));
            e->engine = str_of(JV_GET(ex, "engine"));
            e->route = str_of(JV_GET(ex, "route"));
            e->principal = str_of(JV_GET(ex, "principal_id"));
            e->error = str_of(JV_GET(ex, "error"));
            e->degraded = str_of(JV_GET(ex, "degraded"));
            inum(JV_GET(ex, "prompt_tokens"), &e->prompt);
            inum(JV_GET(ex, "cached_tokens"), &e->cached);
            inum(JV_GET(ex, "cache_write_tokens"), &e->cache_write);
            inum(JV_GET(ex, "completion_tokens"), &e->completion);
            inum(JV_GET(ex, "reasoning_tokens"), &e->reasoning);
            e->total_tokens = e->prompt + e->completion;
            if (num(JV_GET(ex, "latency_us"), &e->latency_us)) e->has |= SEV_LATENCY;
            if (num(JV_GET(ex, "ttft_us"), &e->ttft_us)) e->has |= SEV_TTFT;
            int64_t nusd;
            if (inum(JV_GET(ex, "cost_nusd"), &nusd)) {
                e->cost_usd = (double)nusd / 1e9;
                e->has |= SEV_COST;
            }
            if (num(JV_GET(ex, "energy_j"), &e->energy_j)) e->has |= SEV_ENERGY;
            if (num(JV_GET(ex, "gpu_util_pct"), &e->gpu_util)) e->has |= SEV_GPU;
            const jv *ok = JV_GET(ex, "ok");
            e->ok = ok ? ok->type == JV_TRUE : e->error == NULL;
            e->has |= SEV_OK;
            if ((e->has & SEV_LATENCY) && e->latency_us > 0) {
                e->throughput = (double)e->completion / (e->latency_us / 1e6);
                e->has |= SEV_TPUT;
            }
        } else if (!strcmp(kind, "step")) {
            if (inum(JV_GET(v, "step"), &e->step)) e->has |= SEV_STEP;
            if (num(JV_GET(v, "loss"), &e->loss)) e->has |= SEV_LOSS;
            if (num(JV_GET(v, "wall_us"), &e->wall_us)) e->has |= SEV_WALL;
            if (inum(JV_GET(v, "tokens"), &e->step_tokens)) e->has |= SEV_TOKENS;
            if (JV_GET(v, "unfinished")) e->has &= ~(unsigned)SEV_WALL;
        } else if (!strcmp(kind, "error")) {
            e->error = str_of(JV_GET(v, "message"));
            e->name = str_of(JV_GET(v, "type"));
        }
        return 1;
    }
    if (tag) {
        /* Seed 002: {"ts":..,"tag":"step_end","step":N,"context":{..}} */
        if (!strcmp(tag, "step_begin")) {
            js->have_begin = inum(JV_GET(v, "step"), &js->begin_step) && (e->has & SEV_TS);
            js->begin_step_ts = e->ts;
            e->kind = "step_begin";
            return 1;
        }
        e->phase = "train";
        if (!strcmp(tag, "step_end")) {
            e->kind = "step";
            if (inum(JV_GET(v, "step"), &e->step)) e->has |= SEV_STEP;
            if (num(JV_GET(jv_get(v, "context"), "loss"), &e->loss)) e->has |= SEV_LOSS;
            if (js->have_begin && (e->has & SEV_STEP) && js->begin_step == e->step && (e->has & SEV_TS)) {
                e->wall_us = (e->ts - js->begin_step_ts) * 1e6;
                e->has |= SEV_WALL;
            }
            js->have_begin = 0;
        } else if (!strcmp(tag, "epoch_end")) {
            e->kind = "epoch";
        } else if (!strcmp(tag, "error")) {
            e->kind = "error";
            e->phase = NULL;
            e->name = str_of(JV_GET(v, "type"));
            e->error = str_of(JV_GET(v, "message"));
        } else {
            e->kind = tag;
        }
        return 1;
    }
    return 0;
}

static void report(source_stats *st, const char *path, uint64_t line, const char *why)
{
    st->bad++;
    if (st->reported++ < MAX_REPORTED)
        fprintf(stderr, "tally: %s:%llu: skipped: %s\n", path, (unsigned long long)line, why);
}

static int in_range(const source_opts *o, const sev *e)
{
    if (!o->since && !o->until) return 1;
    if (!(e->has & SEV_TS)) return 0;
    if (o->since && e->ts < o->since) return 0;
    if (o->until && e->ts > o->until) return 0;
    return 1;
}

static int read_jsonl(const char *path, const source_opts *o, sev_fn fn, void *ud, source_stats *st, char *err,
                      size_t errlen)
{
    line_reader lr;
    if (lr_open(&lr, path, MAX_LINE) != 0) {
        snprintf(err, errlen, "cannot read %s", path);
        return -1;
    }
    jstate js;
    memset(&js, 0, sizeof js);
    run_id_from_path(path, js.run_id, sizeof js.run_id);
    json_arena a;
    json_arena_init(&a, (size_t)64 << 20);
    char *line;
    size_t len;
    int complete, toolong, r, rc = 0;
    while ((r = lr_next(&lr, &line, &len, &complete, &toolong)) == 1) {
        st->lines++;
        if (len == 0) continue;
        json_error je;
        json_arena_reset(&a);
        jv *v = toolong ? NULL : json_parse_inplace(&a, line, len, &je);
        sev e;
        if (!v || v->type != JV_OBJ || !sev_from_json(v, &js, &e)) {
            if (!complete && !toolong) {
                st->torn++;
                continue;
            }
            char why[160];
            if (toolong) snprintf(why, sizeof why, "line longer than 16 MiB");
            else if (!v) snprintf(why, sizeof why, "%s at byte %zu", je.what, je.offset);
            else snprintf(why, sizeof why, "not an event (no \"kind\" or \"tag\")");
            if (o->strict) {
                snprintf(err, errlen, "%s:%llu: %s", path, (unsigned long long)lr.lineno, why);
                rc = -1;
                break;
            }
            report(st, path, lr.lineno, why);
            continue;
        }
        if (!in_range(o, &e)) continue;
        st->events++;
        if (fn(ud, &e)) break;
    }
    if (r < 0) {
        snprintf(err, errlen, "read error in %s", path);
        rc = -1;
    }
    json_arena_free(&a);
    lr_close(&lr);
    return rc;
}

/* ---- SQLite ------------------------------------------------------------------ */

static const char *col_text(sqlite3_stmt *s, int i) { return (const char *)sqlite3_column_text(s, i); }

static int col_dbl(sqlite3_stmt *s, int i, double *out)
{
    if (sqlite3_column_type(s, i) == SQLITE_NULL) return 0;
    *out = sqlite3_column_double(s, i);
    return 1;
}

static int col_i64(sqlite3_stmt *s, int i, int64_t *out)
{
    if (sqlite3_column_type(s, i) == SQLITE_NULL) return 0;
    *out = sqlite3_column_int64(s, i);
    return 1;
}

static void bind_range(sqlite3_stmt *q, const source_opts *o)
{
    sqlite3_bind_double(q, 1, o->since ? o->since : -1e300);
    sqlite3_bind_double(q, 2, o->until ? o->until : 1e300);
}

static int read_tally_db(sqlite3 *db, const char *path, const source_opts *o, sev_fn fn, void *ud,
                         source_stats *st, char *err, size_t errlen)
{
    const char *where = (o->since || o->until) ? " WHERE ts >= ?1 AND ts <= ?2" : "";
    char sql[1024];
    snprintf(sql, sizeof sql,
             "SELECT ts, run_id, kind, phase, name, model, engine, route, principal_id, error, degraded, ok,"
             " prompt_tokens, cached_tokens, cache_write_tokens, completion_tokens, reasoning_tokens,"
             " latency_us, ttft_us, cost_nusd, energy_j, gpu_util_pct, step, loss,"
             " CASE WHEN kind='step' THEN json_extract(json, '$.wall_us') END,"
             " CASE WHEN kind='step' THEN json_extract(json, '$.tokens') END,"
             " CASE WHEN kind='step' THEN json_extract(json, '$.unfinished') END,"
             " CASE WHEN kind='run_end' THEN json_extract(json, '$.reason') END,"
             " CASE WHEN kind='run_start' THEN coalesce(json_extract(json, '$.model.name'),"
             "   json_extract(json, '$.model')) END"
             " FROM events%s ORDER BY seq",
             where);
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot query %s: %s", path, sqlite3_errmsg(db));
        return -1;
    }
    if (*where) bind_range(q, o);
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        sev e;
        memset(&e, 0, sizeof e);
        if (col_dbl(q, 0, &e.ts)) e.has |= SEV_TS;
        e.run_id = col_text(q, 1);
        e.kind = col_text(q, 2);
        e.phase = col_text(q, 3);
        e.name = col_text(q, 4);
        e.model = col_text(q, 5);
        e.engine = col_text(q, 6);
        e.route = col_text(q, 7);
        e.principal = col_text(q, 8);
        e.error = col_text(q, 9);
        e.degraded = col_text(q, 10);
        int64_t ok;
        if (col_i64(q, 11, &ok)) {
            e.ok = ok != 0;
            e.has |= SEV_OK;
        }
        col_i64(q, 12, &e.prompt);
        col_i64(q, 13, &e.cached);
        col_i64(q, 14, &e.cache_write);
        col_i64(q, 15, &e.completion);
        col_i64(q, 16, &e.reasoning);
        e.total_tokens = e.prompt + e.completion;
        if (col_dbl(q, 17, &e.latency_us)) e.has |= SEV_LATENCY;
        if (col_dbl(q, 18, &e.ttft_us)) e.has |= SEV_TTFT;
        int64_t nusd;
        if (col_i64(q, 19, &nusd)) {
            e.cost_usd = (double)nusd / 1e9;
            e.has |= SEV_COST;
        }
        if (col_dbl(q, 20, &e.energy_j)) e.has |= SEV_ENERGY;
        if (col_dbl(q, 21, &e.gpu_util)) e.has |= SEV_GPU;
        if (col_i64(q, 22, &e.step)) e.has |= SEV_STEP;
        if (col_dbl(q, 23, &e.loss)) e.has |= SEV_LOSS;
        if (col_dbl(q, 24, &e.wall_us) && sqlite3_column_type(q, 26) == SQLITE_NULL) e.has |= SEV_WALL;
        if (col_i64(q, 25, &e.step_tokens)) e.has |= SEV_TOKENS;
        e.reason = col_text(q, 27);
        e.run_model = col_text(q, 28);
        e.is_request = e.kind && e.name && !strcmp(e.kind, "eval") && !strcmp(e.name, "request");
        if (e.is_request && (e.has & SEV_LATENCY) && e.latency_us > 0) {
            e.throughput = (double)e.completion / (e.latency_us / 1e6);
            e.has |= SEV_TPUT;
        }
        st->events++;
        if (fn(ud, &e)) break;
    }
    sqlite3_finalize(q);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        snprintf(err, errlen, "cannot read %s: %s", path, sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

static int has_col(sqlite3 *db, const char *col)
{
    sqlite3_stmt *q;
    int found = 0;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM pragma_table_info('telemetry') WHERE name = ?", -1, &q,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, col, -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW) found = sqlite3_column_int(q, 0) > 0;
    }
    sqlite3_finalize(q);
    return found;
}

/* OpenJarvis's `telemetry` table, read as it is: each row is one request. */
static int read_openjarvis(sqlite3 *db, const char *path, const source_opts *o, sev_fn fn, void *ud,
                           source_stats *st, char *err, size_t errlen)
{
    static const char *const cols[] = {"timestamp", "model_id", "engine", "prompt_tokens", "completion_tokens",
                                       "total_tokens", "latency_seconds", "ttft", "cost_usd", "energy_joules",
                                       "gpu_utilization_pct", "throughput_tok_per_sec"};
    char sql[1024] = "SELECT ";
    size_t n = strlen(sql);
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        n += (size_t)snprintf(sql + n, sizeof sql - n, "%s%s", i ? ", " : "", has_col(db, cols[i]) ? cols[i] : "NULL");
    snprintf(sql + n, sizeof sql - n, " FROM telemetry%s",
             (o->since || o->until) ? " WHERE timestamp >= ?1 AND timestamp <= ?2" : "");
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot query %s: %s", path, sqlite3_errmsg(db));
        return -1;
    }
    if (o->since || o->until) bind_range(q, o);
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        sev e;
        memset(&e, 0, sizeof e);
        e.kind = "eval";
        e.phase = "serve";
        e.name = "request";
        e.is_request = 1;
        e.run_id = path;
        e.ok = 1;
        e.has |= SEV_OK;
        if (col_dbl(q, 0, &e.ts)) e.has |= SEV_TS;
        e.model = col_text(q, 1);
        e.engine = col_text(q, 2);
        col_i64(q, 3, &e.prompt);
        col_i64(q, 4, &e.completion);
        if (!col_i64(q, 5, &e.total_tokens)) e.total_tokens = 0;
        double x;
        if (col_dbl(q, 6, &x)) {
            e.latency_us = x * 1e6;
            e.has |= SEV_LATENCY;
        }
        if (col_dbl(q, 7, &x)) {
            e.ttft_us = x * 1e6;
            e.has |= SEV_TTFT;
        }
        if (col_dbl(q, 8, &e.cost_usd)) e.has |= SEV_COST;
        if (col_dbl(q, 9, &e.energy_j)) e.has |= SEV_ENERGY;
        if (col_dbl(q, 10, &e.gpu_util)) e.has |= SEV_GPU;
        if (col_dbl(q, 11, &e.throughput)) e.has |= SEV_TPUT;
        st->events++;
        if (fn(ud, &e)) break;
    }
    sqlite3_finalize(q);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        snprintf(err, errlen, "cannot read %s: %s", path, sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

static int read_db(const char *path, int kind, const source_opts *o, sev_fn fn, void *ud, source_stats *st,
                   char *err, size_t errlen)
{
    sqlite3 *db;
    /* Read-only, and immutable=0: a live writer's WAL is honoured. */
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open database %s: %s", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return -1;
    }
    sqlite3_busy_timeout(db, 5000);
    int rc = kind == 1 ? read_tally_db(db, path, o, fn, ud, st, err, errlen)
                       : read_openjarvis(db, path, o, fn, ud, st, err, errlen);
    sqlite3_close(db);
    return rc;
}

int source_read_all(char **paths, int n, const source_opts *o, sev_fn fn, void *ud, source_stats *st, char *err,
                    size_t errlen)
{
    for (int i = 0; i < n; i++) {
        int kind = source_kind(paths[i], err, errlen);
        if (kind < 0) return -1;
        if (kind > 0) {
            if (read_db(paths[i], kind, o, fn, ud, st, err, errlen)) return -1;
            continue;
        }
        size_t nf = 0;
        char **files = collect_jsonl(&paths[i], 1, &nf, err, errlen);
        if (!files) return -1;
        struct stat sb;
        if (nf == 0 && stat(paths[i], &sb) == 0 && S_ISDIR(sb.st_mode)) {
            snprintf(err, errlen, "%s: no *.jsonl files in this directory", paths[i]);
            free_list(files);
            return -1;
        }
        for (size_t k = 0; k < nf; k++) {
            if (read_jsonl(files[k], o, fn, ud, st, err, errlen)) {
                free_list(files);
                return -1;
            }
        }
        free_list(files);
    }
    if (st->reported > MAX_REPORTED)
        fprintf(stderr, "tally: ... %d more lines skipped\n", st->reported - MAX_REPORTED);
    return 0;
}
