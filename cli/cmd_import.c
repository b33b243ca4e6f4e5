/*
 * tally import -- loads JSONL files into a tally database.
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

#include "cli.h"
#include "encode.h"
#include "store.h"
#include "util.h"

#define MAX_LINE ((size_t)16 << 20)
#define MAX_REPORTED 10

typedef struct import_stats {
    uint64_t files, lines, imported, duplicates, unparseable, torn, failed;
    int reported;
} import_stats;

typedef struct file_state {
    const char *path;
    row_ctx ctx;
} file_state;

static void report(import_stats *st, const char *path, uint64_t lineno, const char *why)
{
    st->unparseable++;
    if (st->reported++ < MAX_REPORTED) fprintf(stderr, "  %s:%llu: %s\n", path, (unsigned long long)lineno, why);
}

static int import_line(store *db, file_state *fs, import_stats *st, json_arena *a, char *line, size_t len,
                       uint64_t offset, uint64_t lineno, int complete)
{
    json_error jerr;
    json_arena_reset(a);
    jv *v = json_parse(a, line, len, &jerr);
    if (!v || v->type != JV_OBJ) {
        if (!complete) {
            st->torn++;
            return 0;
        }
        char why[160];
        if (v) snprintf(why, sizeof why, "not a JSON object");
        else snprintf(why, sizeof why, "%s at byte %zu", jerr.what, jerr.offset);
        report(st, fs->path, lineno, why);
        return 0;
    }
    row r;
    if (!row_from_json(v, &fs->ctx, &r)) {
        report(st, fs->path, lineno, "neither \"kind\" nor \"tag\"");
        return 0;
    }
    char idbuf[34];
    if (!r.id.p) {
        /* Other producers' lines: an id from their run, place and content. */
        hash_id(fs->ctx.run_id, strlen(fs->ctx.run_id), offset, line, len, idbuf);
        r.id = (sv){idbuf, strlen(idbuf)};
    }
    r.json = (sv){line, len};
    int rc = store_insert(db, &r, STORE_DEDUP);
    if (rc < 0) {
        st->failed++;
        return -1;
    }
    if (rc == 0) {
        st->duplicates++;
        return 0;
    }
    st->imported++;
    if ((SV_IS(r.kind, "run_start") || SV_IS(r.kind, "run_end")) &&
        store_run_line(db, r.run_id, SV_IS(r.kind, "run_end"), (sv){line, len}) != 0) {
        st->failed++;
        return -1;
    }
    return 0;
}

static int import_file(store *db, const char *path, import_stats *st, json_arena *a)
{
    line_reader lr;
    if (lr_open(&lr, path, MAX_LINE) != 0) {
        cli_error("import", "cannot read %s", path);
        return -1;
    }
    file_state fs;
    char run_id[256];
    fs.path = path;
    run_id_from_path(path, run_id, sizeof run_id);
    row_ctx_init(&fs.ctx, run_id);
    st->files++;
    char *line;
    size_t len;
    int complete, toolong, rc = 0, r;
    uint64_t imported_before = st->imported;
    if (store_begin(db) != 0) {
        cli_error("import", "cannot write the database: %s", store_errmsg(db));
        lr_close(&lr);
        return -1;
    }
    while ((r = lr_next(&lr, &line, &len, &complete, &toolong)) == 1) {
        st->lines++;
        if (len == 0 && complete) continue;
        if (toolong) {
            report(st, path, lr.lineno, "line longer than 16 MiB");
            continue;
        }
        if (import_line(db, &fs, st, a, line, len, lr.offset, lr.lineno, complete) != 0) {
            rc = -1;
            break;
        }
    }
    if (r < 0) {
        cli_error("import", "read error in %s", path);
        rc = -1;
    }
    lr_close(&lr);
    if (rc == 0 && store_commit(db) != 0) {
        cli_error("import", "cannot commit to the database: %s", store_errmsg(db));
        rc = -1;
    } else if (rc != 0) {
        cli_error("import", "cannot write the database: %s", store_errmsg(db));
        store_rollback(db);
    }
    if (rc != 0) {
        /* Rolled back: this file's rows are not in the database. */
        st->failed += st->imported - imported_before;
        st->imported = imported_before;
    }
    return rc;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tally import FILE|DIR... --db DB\n"
            "\n"
            "Loads JSONL events into a tally SQLite database (created when missing).\n"
            "Reads tally files, toy/v1 files from other producers (integer t, no\n"
            "schema), and TelemetryLogger tagged lines (ts/tag: step_begin, step_end,\n"
            "epoch_begin, epoch_end, error).  A DIR is searched for *.jsonl files.\n"
            "Importing the same file twice adds nothing.\n"
            "\n"
            "  --db DB      the database (required)\n"
            "  -h, --help   this text\n");
}

int cmd_import(int argc, char **argv)
{
    const char *dbpath = NULL;
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
        } else if (!strncmp(argv[i], "--db=", 5)) {
            dbpath = argv[i] + 5;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            cli_error("import", "unknown option %s (try --help)", argv[i]);
            free(inputs);
            return 2;
        } else {
            inputs[ninputs++] = argv[i];
        }
    }
    if (!dbpath || !ninputs) {
        cli_error("import", "%s", !dbpath ? "--db DB is required" : "no FILE or DIR given");
        free(inputs);
        return 2;
    }
    char err[512];
    size_t nfiles = 0;
    char **files = collect_jsonl(inputs, ninputs, &nfiles, err, sizeof err);
    free(inputs);
    if (!files) {
        cli_error("import", "%s", err);
        return 1;
    }
    store *db = store_open(dbpath, STORE_CREATE | STORE_CHECKPOINTER, err, sizeof err);
    if (!db) {
        cli_error("import", "%s", err);
        free_list(files);
        return 1;
    }
    import_stats st = {0};
    json_arena a;
    json_arena_init(&a, (size_t)64 << 20);
    int rc = 0;
    for (size_t i = 0; i < nfiles && rc == 0; i++) rc = import_file(db, files[i], &st, &a);
    json_arena_free(&a);
    store_close(db);
    free_list(files);
    if (st.reported > MAX_REPORTED) fprintf(stderr, "  ... and %d more\n", st.reported - MAX_REPORTED);
    printf("files %llu, lines read %llu, imported %llu, duplicates skipped %llu, unparseable %llu, "
           "torn last lines %llu\n",
           (unsigned long long)st.files, (unsigned long long)st.lines, (unsigned long long)st.imported,
           (unsigned long long)st.duplicates, (unsigned long long)st.unparseable, (unsigned long long)st.torn);
    if (st.failed) cli_error("import", "%llu rows could not be written", (unsigned long long)st.failed);
    return rc == 0 ? 0 : 1;
}
