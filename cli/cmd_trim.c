/*
 * tally trim -- retention by hand: delete old events, or stored prompt text.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "store.h"
#include "util.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tally trim DB [--older-than DURATION] [--max-rows N] [--drop-text] [--dry-run]\n"
            "\n"
            "  --older-than D   delete events older than D (90s, 30m, 24h, 30d, 2w;\n"
            "                   the unit is required)\n"
            "  --max-rows N     then keep only the newest N events\n"
            "  --drop-text      remove stored request text from every row\n"
            "  --dry-run        say how many rows would go, and change nothing\n"
            "  -h, --help       this text\n"
            "\n"
            "Says how many rows were deleted or cleared.\n");
}

int cmd_trim(int argc, char **argv)
{
    const char *dbpath = NULL;
    double older = 0;
    long long max_rows = 0;
    int drop_text = 0, have_age = 0, dry = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--older-than")) {
            if (i + 1 >= argc || parse_duration(argv[i + 1], &older) != 0 || older <= 0) {
                cli_error("trim", "--older-than needs a duration with its unit, such as 30d, 12h or 90s");
                return 2;
            }
            have_age = 1;
            i++;
        } else if (!strcmp(a, "--max-rows")) {
            char *end = NULL;
            if (i + 1 < argc) max_rows = strtoll(argv[i + 1], &end, 10);
            if (i + 1 >= argc || !end || *end || max_rows < 1) {
                cli_error("trim", "--max-rows needs a positive number");
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--drop-text")) {
            drop_text = 1;
        } else if (!strcmp(a, "--dry-run") || !strcmp(a, "-n")) {
            dry = 1;
        } else if (a[0] == '-' && a[1]) {
            cli_error("trim", "unknown option %s (try --help)", a);
            return 2;
        } else if (!dbpath) {
            dbpath = a;
        } else {
            cli_error("trim", "one database at a time (got %s and %s)", dbpath, a);
            return 2;
        }
    }
    if (!dbpath) {
        cli_error("trim", "no database given (try --help)");
        return 2;
    }
    if (!have_age && !max_rows && !drop_text) {
        cli_error("trim", "nothing to do: give --older-than, --max-rows or --drop-text");
        return 2;
    }
    char err[512];
    store *db = store_open(dbpath, 0, err, sizeof err);
    if (!db) {
        cli_error("trim", "%s", err);
        return 1;
    }
    /* One transaction: committed, or with --dry-run rolled back after
     * counting exactly what would have gone. */
    int rc = 0;
    const char *verb = dry ? "would delete" : "deleted", *verb_text = dry ? "would remove" : "removed";
    if (store_begin(db) != 0) {
        cli_error("trim", "%s", store_errmsg(db));
        store_close(db);
        return 1;
    }
    int64_t deleted = 0, cleared = 0;
    if (have_age || max_rows) {
        deleted = store_trim(db, have_age ? (double)time(NULL) - older : 0, max_rows);
        if (deleted < 0) rc = 1;
    }
    if (drop_text && rc == 0) {
        cleared = store_drop_text(db);
        if (cleared < 0) rc = 1;
    }
    if (rc) {
        cli_error("trim", "%s", store_errmsg(db));
        store_rollback(db);
    } else if (dry) {
        store_rollback(db);
    } else if (store_commit(db) != 0) {
        cli_error("trim", "%s", store_errmsg(db));
        rc = 1;
    }
    if (rc == 0 && (have_age || max_rows)) printf("%s %lld rows\n", verb, (long long)deleted);
    if (rc == 0 && drop_text) printf("%s text from %lld rows\n", verb_text, (long long)cleared);
    store_close(db);
    return rc;
}
