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
#include "source.h"
#include "store.h"
#include "util.h"

typedef struct import_stats {
    uint64_t files, imported, duplicates, failed;
    source_stats read;        /* lines, unparseable (bad), torn: from the reader */
} import_stats;

typedef struct importer {
    store *db;
    import_stats *st;
    int failed;               /* a write failed: stop */
} importer;

/* One event (its id given by the reader when the line had none). */
static int import_row(void *ud, const row *r)
{
    importer *im = ud;
    int rc = store_insert(im->db, r, STORE_DEDUP);
    if (rc < 0) {
        im->st->failed++;
        im->failed = 1;
        return 1;
    }
    if (rc == 0) {
        im->st->duplicates++;
        return 0;
    }
    im->st->imported++;
    if ((SV_IS(r->kind, "run_start") || SV_IS(r->kind, "run_end")) &&
        store_run_line(im->db, r->run_id, SV_IS(r->kind, "run_end"), r->json) != 0) {
        im->st->failed++;
        im->failed = 1;
        return 1;
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
    source_opts o = {0, 0, 0, NULL};
    char err[512] = "";
    int rc = source_read_jsonl(path, &o, import_row, &im, &st->read, err, sizeof err, 1);
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
    import_stats st;
    memset(&st, 0, sizeof st);
    int rc = 0;
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
