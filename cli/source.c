/* source -- see source.h. */
#include "source.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ch_cells.h"
#include "clickhouse.h"
#include "idset.h"
#include "par.h"
#include "read_sqlite.h"
#include "util.h"


int source_kind(const char *path, char *err, size_t errlen)
{
    if (!strcmp(path, "-")) return 0;
    if (ch_is_url(path)) return SOURCE_CLICKHOUSE;
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: no such file or directory", path);
        return -1;
    }
    if (S_ISDIR(st.st_mode)) return 0;
    return read_sqlite_kind(path, err, errlen);
}

/* ---- JSONL ----------------------------------------------------------------- */

void source_report(source_stats *st, const char *path, uint64_t line, const char *why)
{
    st->bad++;
    if (st->reported++ < SOURCE_MAX_REPORTED)
        fprintf(stderr, "tally: %s:%llu: skipped: %s\n", path, (unsigned long long)line, why);
}

void source_why(char *why, size_t n, int toolong, const jv *v, const json_error *je)
{
    if (toolong) snprintf(why, n, "line longer than 16 MiB");
    else if (!v) snprintf(why, n, "%s at byte %zu", je->what, je->offset);
    else snprintf(why, n, "not an event (no \"kind\" or \"tag\")");
}

int source_in_range(const source_opts *o, const row *r)
{
    if (!o->since && !o->until) return 1;
    if (!(r->has & ROW_TS)) return 0;
    if (o->since && r->ts < o->since) return 0;
    if (o->until && r->ts > o->until) return 0;
    return 1;
}

int source_line(json_arena *a, row_ctx *ctx, char *line, size_t len, const line_info *li, const source_opts *o,
                row *e, char idbuf[SOURCE_ID_LEN], char *why, size_t whylen)
{
    if (len == 0) return LINE_SKIP;
    json_error je;
    json_arena_reset(a);
    const jv *v = NULL;
    int is_event;
    if (li->toolong) is_event = 0;
    /* only the members rows use; ids for lines without one (and the rows'
     * json) need the line as it was: its strings copied */
    else is_event = row_from_line(a, line, len, li->give_ids, ctx, e, &v, &je);
    if (!is_event) {
        if (!li->complete && !li->toolong) return LINE_TORN;
        source_why(why, whylen, li->toolong, v, &je);
        return LINE_BAD;
    }
    if (!source_in_range(o, e)) return LINE_SKIP;
    if (li->give_ids) {
        if (!e->id.p) {
            hash_id(ctx->run_id, strlen(ctx->run_id), li->offset, line, len, idbuf);
            e->id = (sv){idbuf, strlen(idbuf)};
        }
        e->json = (sv){line, len}; /* parsed by copy: the line is as read */
    }
    return LINE_EVENT;
}

int source_read_jsonl(const char *path, const source_opts *o, row_fn fn, void *ud, source_stats *st, char *err,
                      size_t errlen, int give_ids)
{
    line_reader lr;
    if (lr_open(&lr, path, SOURCE_MAX_LINE) != 0) {
        snprintf(err, errlen, "cannot read %s", path);
        return -1;
    }
    char run_id[256];
    run_id_from_path(path, run_id, sizeof run_id);
    row_ctx ctx;
    row_ctx_init(&ctx, run_id);
    json_arena a;
    json_arena_init(&a, (size_t)64 << 20);
    char *line;
    size_t len;
    line_info li = {.give_ids = give_ids};
    int r, rc = 0;
    while ((r = lr_next(&lr, &line, &len, &li.complete, &li.toolong)) == 1) {
        st->lines++;
        li.offset = lr.offset;
        row e;
        char idbuf[SOURCE_ID_LEN], why[160];
        int got = source_line(&a, &ctx, line, len, &li, o, &e, idbuf, why, sizeof why);
        if (got == LINE_TORN) st->torn++;
        if (got == LINE_BAD && o->strict) {
            snprintf(err, errlen, "%s:%llu: %s", path, (unsigned long long)lr.lineno, why);
            rc = -1;
            break;
        }
        if (got == LINE_BAD) source_report(st, path, lr.lineno, why);
        if (got != LINE_EVENT) continue;
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

/* ---- ClickHouse ---------------------------------------------------------------- */

typedef struct chread {
    row_ctx ctx;
    json_arena a;
    const source_opts *o;
    row_fn fn;
    void *ud;
    source_stats *st;
    const char *path;
    int stop;
} chread;

/* One row: its run_id, a tab, and the event's line as it was written. */
static int ch_line(void *arg, char *line, size_t len)
{
    chread *c = arg;
    c->st->lines++;
    char *tab = memchr(line, '\t', len);
    json_error je;
    json_arena_reset(&c->a);
    jv *v = tab ? json_parse(&c->a, tab + 1, len - (size_t)(tab + 1 - line), &je) : NULL;
    snprintf(c->ctx.run_id, sizeof c->ctx.run_id, "%.*s", tab ? (int)(tab - line) : 0, line);
    row e;
    if (!v || v->type != JV_OBJ || !row_from_json(v, &c->ctx, &e)) {
        source_report(c->st, c->path, c->st->lines, tab ? "not an event" : "not a row of tally's table");
        return 0;
    }
    if (!source_in_range(c->o, &e)) return 0;
    e.json = (sv){tab + 1, len - (size_t)(tab + 1 - line)};
    c->st->events++;
    c->stop = c->fn(c->ud, &e);
    return c->stop;
}

/* Every event of a ClickHouse database, in time order, each once (the
 * table is read FINAL: rows sent twice count once).  The time range is
 * asked of the server; grouping is done here. */
static int read_clickhouse(const char *url, const source_opts *o, row_fn fn, void *ud, source_stats *st, char *err,
                           size_t errlen)
{
    ch_target t;
    if (ch_target_init(&t, url, err, errlen)) return -1;
    char time_sql[256] = "";
    /* the same range as source_in_range: since and until both included */
    if (o->since && o->until) snprintf(time_sql, sizeof time_sql, " AND ts >= %.6f AND ts <= %.6f", o->since, o->until);
    else if (o->since) snprintf(time_sql, sizeof time_sql, " AND ts >= %.6f", o->since);
    else if (o->until) snprintf(time_sql, sizeof time_sql, " AND ts <= %.6f", o->until);
    /* `tally stats`: the requests are answered by the server as cells, the
     * other events (few) read as rows. */
    int pushdown = o->cells && o->ch_pushdown;
    const char *final = ch_final(&t);
    if (pushdown && ch_read_cells(&t, final, time_sql, o, ud, st, err, errlen)) {
        ch_target_free(&t);
        return -1;
    }
    buf sql;
    buf_init(&sql, (size_t)1 << 20);
    buf_puts(&sql, "SELECT run_id, json FROM ");
    buf_puts(&sql, t.db);
    buf_puts(&sql, ".events");
    buf_puts(&sql, final);
    /* the few other events: found on two small columns before the lines are read */
    if (pushdown) buf_puts(&sql, " PREWHERE NOT (kind = 'eval' AND name = 'request')");
    buf_puts(&sql, " WHERE 1");
    buf_puts(&sql, time_sql);
    buf_puts(&sql, " ORDER BY ts, id FORMAT TabSeparatedRaw");
    buf_putc(&sql, 0);
    chread c;
    memset(&c, 0, sizeof c);
    row_ctx_init(&c.ctx, "");
    json_arena_init(&c.a, (size_t)64 << 20);
    c.o = o;
    c.fn = fn;
    c.ud = ud;
    c.st = st;
    c.path = url;
    long status = sql.failed ? -1 : ch_query_lines(&t, sql.p, ch_line, &c, err, errlen);
    if (sql.failed) snprintf(err, errlen, "query too long");
    json_arena_free(&c.a);
    buf_free(&sql);
    ch_target_free(&t);
    return status == 200 ? 0 : -1;
}

/* JSONL at `path` is read with every core unless one is asked for, lines
 * must stop the read at the first bad one, or the input is a stream. */
static int every_core(const source_opts *o, const char *path)
{
    return par_threads(o->threads) > 1 && !o->strict && strcmp(path, "-") != 0;
}

int source_read_file(const char *path, const source_opts *o, row_fn fn, void *ud, source_stats *st, char *err,
                     size_t errlen, int give_ids)
{
    if (every_core(o, path)) {
        char *files[1] = {(char *)path};
        return source_read_par(files, 1, o, NULL, fn, ud, give_ids, st, err, errlen);
    }
    return source_read_jsonl(path, o, fn, ud, st, err, errlen, give_ids);
}

static int read_sources(char **paths, int n, const source_opts *o, row_fn fn, void *ud, source_stats *st, char *err,
                        size_t errlen, int give_ids)
{
    for (int i = 0; i < n; i++) {
        int kind = source_kind(paths[i], err, errlen);
        if (kind < 0) return -1;
        if (kind == SOURCE_CLICKHOUSE) {
            if (read_clickhouse(paths[i], o, fn, ud, st, err, errlen)) return -1;
            continue;
        }
        if (kind > 0) {
            if (read_sqlite(paths[i], kind, o, fn, ud, st, err, errlen)) return -1;
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
        if (every_core(o, paths[i])) {
            int rc = source_read_par(files, nf, o, give_ids ? NULL : o->par, fn, ud, give_ids, st, err, errlen);
            free_list(files);
            if (rc) return -1;
            continue;
        }
        for (size_t k = 0; k < nf; k++) {
            if (source_read_jsonl(files[k], o, fn, ud, st, err, errlen, give_ids)) {
                free_list(files);
                return -1;
            }
        }
        free_list(files);
    }
    source_report_more(st);
    return 0;
}

void source_report_more(const source_stats *st)
{
    if (st->reported > SOURCE_MAX_REPORTED)
        fprintf(stderr, "tally: ... %d more lines skipped\n", st->reported - SOURCE_MAX_REPORTED);
}

/* Merging by id: passes each event on the first time its id is met. */
typedef struct merger {
    row_fn fn;
    void *ud;
    idset ids;
    source_stats *st;
    int warned;
} merger;

static int merge_row(void *arg, const row *r)
{
    merger *m = arg;
    if (r->id.p) {
        int added = idset_add(&m->ids, r->id.p, r->id.n);
        if (added == 0) {
            m->st->duplicates++;
            m->st->events--;
            return 0;
        }
        if (added < 0 && !m->warned) {
            m->warned = 1;
            fprintf(stderr, "tally: more than %zu events: ids past them are not merged across sources\n",
                    (size_t)IDSET_MAX);
        }
    }
    return m->fn(m->ud, r);
}

int source_read_all(char **paths, int n, const source_opts *o, row_fn fn, void *ud, source_stats *st, char *err,
                    size_t errlen)
{
    if (errlen) err[0] = 0;
    merger m = {fn, ud, {0}, st, 0};
    source_opts merged;
    int merging = n > 1;
    if (merging) {
        /* Rollup cells cannot be merged by id: read rows. */
        merged = *o;
        merged.cells = NULL;
        merged.par = NULL; /* one id set for every source: one thread */
        o = &merged;
        idset_init(&m.ids);
        fn = merge_row;
        ud = &m;
    }
    int rc = read_sources(paths, n, o, fn, ud, st, err, errlen, merging);
    if (merging) idset_free(&m.ids);
    return rc;
}
