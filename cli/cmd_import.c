/*
 * tally import -- loads JSONL files into a tally database, or into
 * ClickHouse (src/clickhouse.h: batches of TabSeparated rows, one INSERT
 * each, into a table that keeps one row per event id).
 *
 * Reads tally's own files, toy/v1 files from other producers (tep writes
 * `t` as an integer and its run_start has no run_id), v0 files with no
 * schema, and the TelemetryLogger callbacks' tagged lines ({"ts":..,"tag":"step_end",..}).
 * Importing the same file twice adds nothing: tally's events carry an id;
 * other lines get a deterministic one from their run, byte offset and
 * content.  A torn last line (a writer that crashed) is skipped and
 * counted apart from lines that do not parse.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>

#include "clickhouse.h"
#include "hash.h"
#include "read_sqlite.h"
#include "cli.h"
#include "encode.h"
#include "source.h"
#include "store.h"
#include "util.h"

typedef struct import_stats {
    uint64_t files, imported, duplicates, failed;
    source_stats read;        /* lines, unparseable (bad), torn: from the reader */
    int threads;              /* --threads: parse each JSONL file with these (one writer) */
} import_stats;

typedef struct importer {
    store *db;
    import_stats *st;
    int failed;               /* a write failed: stop */
} importer;

static int is_run_line(const row *r) { return SV_IS(r->kind, "run_start") || SV_IS(r->kind, "run_end"); }

static int write_failed(importer *im)
{
    im->st->failed++;
    im->failed = 1;
    return 1;
}

/* One event (its id given by the reader when the line had none). */
static int import_row(void *ud, const row *r)
{
    importer *im = ud;
    int rc = store_insert(im->db, r, STORE_DEDUP);
    if (rc < 0) return write_failed(im);
    if (rc == 0) {
        im->st->duplicates++;
        return 0;
    }
    im->st->imported++;
    if (is_run_line(r) && store_run_line(im->db, r->run_id, SV_IS(r->kind, "run_end"), r->json) != 0)
        return write_failed(im);
    return 0;
}

/* A chunk's events (from the reader on every core): the stretches between
 * run_start / run_end lines several to a statement, those lines one by
 * one (the runs table learns of the ones stored). */
static int import_rows(void *ud, const row *rows, size_t n)
{
    importer *im = ud;
    for (size_t i = 0; i < n;) {
        size_t j = i, stored = 0;
        while (j < n && !is_run_line(&rows[j])) j++;
        if (j > i && store_insert_rows(im->db, rows + i, j - i, STORE_DEDUP, &stored) != 0) return write_failed(im);
        im->st->imported += stored;
        im->st->duplicates += j - i - stored;
        if (j < n && import_row(ud, &rows[j])) return 1;
        i = j + 1;
    }
    return 0;
}

/* One file, one transaction: all of it, or (on a write error) none. */
static int import_file(store *db, const char *path, import_stats *st)
{
    st->files++;
    uint64_t imported_before = st->imported;
    if (store_begin(db) != 0) {
        cli_error("import", "cannot write the database: %s", store_errmsg(db));
        return -1;
    }
    importer im = {db, st, 0};
    source_opts o = {0};
    o.threads = st->threads;
    o.rows = import_rows;
    char err[512] = "";
    int rc = source_read_file(path, &o, import_row, &im, &st->read, err, sizeof err, 1);
    if (rc != 0) cli_error("import", "%s", err);
    if (im.failed) rc = -1;
    if (rc == 0 && store_commit(db) != 0) {
        cli_error("import", "cannot commit to the database: %s", store_errmsg(db));
        rc = -1;
    } else if (rc != 0) {
        if (im.failed) cli_error("import", "cannot write the database: %s", store_errmsg(db));
        store_rollback(db);
    }
    if (rc != 0) {
        /* Rolled back: this file's rows are not in the database. */
        st->failed += st->imported - imported_before;
        st->imported = imported_before;
    }
    return rc;
}

/* ---- into ClickHouse ---------------------------------------------------------------- */

#define CH_BATCH_ROWS 20000
#define CH_BATCH_BYTES ((size_t)16 << 20)

typedef struct ch_import {
    ch_target t;
    buf batch;
    buf line;                 /* an event's line, for rows read from a database without one */
    size_t rows;
    uint64_t run_hash, ordinal; /* the database being read: its name, the row's place */
    char insert[4096];
    import_stats *st;
    int failed;
} ch_import;

/* Sends the batch: one INSERT.  A batch sent again (this import run twice)
 * leaves rows the table's engine merges into one, and queries read FINAL. */
static int ch_flush(ch_import *ci)
{
    if (!ci->rows) return 0;
    char err[600];
    long status = ch_request(&ci->t, ci->insert, ci->batch.p, ci->batch.len, NULL, err, sizeof err);
    if (status != 200) {
        cli_error("import", "%s", err);
        ci->st->failed += ci->rows;
        ci->failed = 1;
    } else {
        ci->st->imported += ci->rows;
    }
    buf_reset(&ci->batch);
    ci->rows = 0;
    return ci->failed;
}

/* An OpenJarvis row has no line and no id: it gets tally's line for a
 * request (its cost in USD as integer nano-USD, as tally keeps costs) and
 * an id from the database's name and the row's place in it, so importing
 * the database again gives the same ids. */
static void line_of_row(ch_import *ci, row *r)
{
    buf *b = &ci->line;
    buf_reset(b);
    char id[40];
    ci->ordinal++;
    if (r->id.p) snprintf(id, sizeof id, "%.*s", (int)(r->id.n < 39 ? r->id.n : 39), r->id.p);
    else
        snprintf(id, sizeof id, "%012llx000000%010llx", (unsigned long long)(ci->run_hash & 0xffffffffffffULL),
                 (unsigned long long)(ci->ordinal & 0xffffffffffULL));
    if ((r->has & ROW_COST_USD) && !(r->has & ROW_COST)) {
        r->cost_nusd = (int64_t)llround(r->cost_usd * 1e9);
        r->has = (r->has & ~(unsigned)ROW_COST_USD) | ROW_COST;
    }
    buf_puts(b, "{\"kind\":\"eval\",\"phase\":\"serve\",\"name\":\"request\",\"id\":\"");
    size_t id_at = b->len;
    buf_puts(b, id);
    buf_putc(b, '"');
    if (r->has & ROW_TS) enc_member_double(b, "ts", r->ts);
    buf_puts(b, ",\"extra\":{\"model\":");
    enc_str(b, r->model.p ? r->model.p : "", r->model.p ? r->model.n : 0);
    if (r->engine.p) {
        buf_puts(b, ",\"engine\":");
        enc_str(b, r->engine.p, r->engine.n);
    }
    enc_member_i64(b, "prompt_tokens", r->prompt);
    enc_member_i64(b, "completion_tokens", r->completion);
    if (r->has & ROW_LATENCY) enc_member_i64(b, "latency_us", (int64_t)llround(r->latency_us));
    if (r->has & ROW_TTFT) enc_member_i64(b, "ttft_us", (int64_t)llround(r->ttft_us));
    if (r->has & ROW_COST) enc_member_i64(b, "cost_nusd", r->cost_nusd);
    if (r->has & ROW_ENERGY) enc_member_double(b, "energy_j", r->energy_j);
    if (r->has & ROW_GPU) enc_member_double(b, "gpu_util_pct", r->gpu_util);
    buf_puts(b, "}}");
    if (b->failed) return;
    r->id = (sv){b->p + id_at, strlen(id)};
    r->json = (sv){b->p, b->len};
}

static int ch_import_row(void *ud, const row *given)
{
    ch_import *ci = ud;
    row copy;
    const row *r = given;
    if (!given->json.p || !given->json.n) {
        copy = *given;
        line_of_row(ci, &copy);
        r = &copy;
    }
    ch_row_tsv(&ci->batch, r);
    if (ci->batch.failed) {
        cli_error("import", "an event is larger than %zu MB", CH_BATCH_BYTES >> 20);
        ci->failed = 1;
        return 1;
    }
    if (++ci->rows >= CH_BATCH_ROWS || ci->batch.len >= CH_BATCH_BYTES / 2) return ch_flush(ci);
    return 0;
}

/* A database to import, and what kind (READ_SQLITE_*). */
typedef struct dbin {
    const char *path;
    int kind;
} dbin;

static int import_clickhouse(const char *url, char **files, size_t nfiles, const dbin *dbs, int ndbs,
                             import_stats *st)
{
    ch_import ci;
    memset(&ci, 0, sizeof ci);
    char err[600];
    if (ch_target_init(&ci.t, url, err, sizeof err) || ch_create_schema(&ci.t, err, sizeof err)) {
        cli_error("import", "%s", err);
        ch_target_free(&ci.t);
        return 1;
    }
    snprintf(ci.insert, sizeof ci.insert, "INSERT INTO %s.events (%s) FORMAT TabSeparated", ci.t.db, ch_columns());
    buf_init(&ci.batch, CH_BATCH_BYTES);
    buf_init(&ci.line, (size_t)1 << 20);
    ci.st = st;
    int rc = 0;
    for (int i = 0; i < ndbs && !rc && !ci.failed; i++) {
        st->files++;
        source_opts o = {0};
        o.with_json = 1;
        const char *base = strrchr(dbs[i].path, '/');
        base = base ? base + 1 : dbs[i].path;
        ci.run_hash = fnv1a(FNV_SEED, base, strlen(base));
        ci.ordinal = 0;
        rc = read_sqlite(dbs[i].path, dbs[i].kind, &o, ch_import_row, &ci, &st->read, err, sizeof err);
        if (rc && !ci.failed) cli_error("import", "%s", err);
    }
    for (size_t i = 0; i < nfiles && !rc && !ci.failed; i++) {
        st->files++;
        source_opts o = {0};
        o.threads = st->threads;
        rc = source_read_file(files[i], &o, ch_import_row, &ci, &st->read, err, sizeof err, 1);
        if (rc && !ci.failed) cli_error("import", "%s", err);
    }
    if (!rc && !ci.failed) ch_flush(&ci);
    buf_free(&ci.batch);
    buf_free(&ci.line);
    ch_target_free(&ci.t);
    return rc || ci.failed ? 1 : 0;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tally import FILE|DIR... --db DB\n"
            "       tally import FILE|DIR|DB... --to clickhouse://HOST:PORT/DATABASE\n"
            "\n"
            "Loads JSONL events into a tally SQLite database (created when missing), or\n"
            "JSONL events, tally databases and OpenJarvis telemetry databases into\n"
            "ClickHouse (its database and tables created when missing; the user and\n"
            "password from TALLY_CLICKHOUSE_USER and TALLY_CLICKHOUSE_PASSWORD or\n"
            "TALLY_CLICKHOUSE_PASSWORD_FILE, never from the command line).  An OpenJarvis\n"
            "row's cost in USD is kept as integer nano-USD, as tally keeps costs; its\n"
            "total_tokens and throughput columns are not kept.\n"
            "Reads tally files, toy/v1 files from other producers (integer t, no\n"
            "schema), and TelemetryLogger tagged lines (ts/tag: step_begin, step_end,\n"
            "epoch_begin, epoch_end, error).  A DIR is searched for *.jsonl files.\n"
            "Importing the same file twice adds nothing.\n"
            "\n"
            "  --db DB      the SQLite database\n"
            "  --to URL     a ClickHouse database (clickhouses:// for TLS), or a SQLite path\n"
            "  --threads N  parse JSONL with N threads (default: every core; 1: one); one\n"
            "               writes, in the files' order\n"
            "  -h, --help   this text\n");
}

int cmd_import(int argc, char **argv)
{
    const char *dbpath = NULL;
    int threads = 0;
    char **inputs = calloc((size_t)argc + 1, sizeof *inputs);
    int ninputs = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            free(inputs);
            return 0;
        } else if (!strcmp(argv[i], "--db")) {
            if (i + 1 >= argc) {
                cli_error("import", "--db needs a path");
                free(inputs);
                return 2;
            }
            dbpath = argv[++i];
        } else if (!strcmp(argv[i], "--threads")) {
            if (cli_threads("import", i + 1 < argc ? argv[i + 1] : NULL, &threads)) {
                free(inputs);
                return 2;
            }
            i++;
        } else if (!strncmp(argv[i], "--db=", 5)) {
            dbpath = argv[i] + 5;
        } else if (!strcmp(argv[i], "--to")) {
            if (i + 1 >= argc) {
                cli_error("import", "--to needs a ClickHouse URL or a database path");
                free(inputs);
                return 2;
            }
            dbpath = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1]) {
            cli_error("import", "unknown option %s (try --help)", argv[i]);
            free(inputs);
            return 2;
        } else {
            inputs[ninputs++] = argv[i];
        }
    }
    if (!dbpath || !ninputs) {
        cli_error("import", "%s", !dbpath ? "--db DB or --to URL is required" : "no FILE or DIR given");
        free(inputs);
        return 2;
    }
    char err[512];
    /* Databases (tally's, OpenJarvis's): into ClickHouse only. */
    dbin *dbs = calloc((size_t)ninputs + 1, sizeof *dbs);
    if (!dbs) {
        cli_error("import", "out of memory");
        free(inputs);
        return 1;
    }
    int ndbs = 0, nfileargs = 0;
    for (int i = 0; i < ninputs; i++) {
        int kind = source_kind(inputs[i], err, sizeof err);
        if (kind < 0) {
            cli_error("import", "%s", err);
            free(inputs);
            free(dbs);
            return 1;
        }
        if (kind == READ_SQLITE_TALLY || kind == READ_SQLITE_OPENJARVIS) {
            if (!ch_is_url(dbpath)) {
                cli_error("import", "%s is a database: --db reads JSONL files (a database goes into ClickHouse "
                          "with --to clickhouse://...)", inputs[i]);
                free(inputs);
                free(dbs);
                return 2;
            }
            dbs[ndbs++] = (dbin){inputs[i], kind};
        } else {
            inputs[nfileargs++] = inputs[i];
        }
    }
    size_t nfiles = 0;
    char **files = nfileargs ? collect_jsonl(inputs, nfileargs, &nfiles, err, sizeof err) : calloc(1, sizeof(char *));
    free(inputs);
    if (!files) {
        cli_error("import", "%s", nfileargs ? err : "out of memory");
        free(dbs);
        return 1;
    }
    import_stats st;
    memset(&st, 0, sizeof st);
    st.threads = threads;
    int rc = 0;
    if (ch_is_url(dbpath)) {
        rc = import_clickhouse(dbpath, files, nfiles, dbs, ndbs, &st);
        free_list(files);
        free(dbs);
        source_report_more(&st.read);
        printf("files %llu, lines read %llu, database rows read %llu, sent %llu, unparseable %llu, torn last lines "
               "%llu\n",
               (unsigned long long)st.files, (unsigned long long)st.read.lines, (unsigned long long)st.read.rows_read,
               (unsigned long long)st.imported, (unsigned long long)st.read.bad, (unsigned long long)st.read.torn);
        if (st.failed) cli_error("import", "%llu events were not stored", (unsigned long long)st.failed);
        return rc;
    }
    free(dbs);
    store *db = store_open(dbpath, STORE_CREATE | STORE_CHECKPOINTER | STORE_NEW_BULK, err, sizeof err);
    if (!db) {
        cli_error("import", "%s", err);
        free_list(files);
        return 1;
    }
    for (size_t i = 0; i < nfiles && rc == 0; i++) rc = import_file(db, files[i], &st);
    store_close(db);
    free_list(files);
    source_report_more(&st.read);
    printf("files %llu, lines read %llu, imported %llu, duplicates skipped %llu, unparseable %llu, "
           "torn last lines %llu\n",
           (unsigned long long)st.files, (unsigned long long)st.read.lines, (unsigned long long)st.imported,
           (unsigned long long)st.duplicates, (unsigned long long)st.read.bad, (unsigned long long)st.read.torn);
    if (st.failed) cli_error("import", "%llu rows could not be written", (unsigned long long)st.failed);
    return rc == 0 ? 0 : 1;
}
