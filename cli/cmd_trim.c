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
            "usage: tally trim DB [--older-than DURATION] [--max-rows N] [--drop-text]\n"
            "\n"
            "  --older-than D   delete events older than D (90s, 30m, 24h, 30d, 2w)\n"
            "  --max-rows N     then keep only the newest N events\n"
            "  --drop-text      remove stored request text from every row\n"
            "  -h, --help       this text\n"
            "\n"
            "Says how many rows were deleted or cleared.\n");
}

int cmd_trim(int argc, char **argv)
{
    const char *dbpath = NULL;
    double older = 0;
    long long max_rows = 0;
    int drop_text = 0, have_age = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--older-than")) {
            if (i + 1 >= argc || parse_duration(argv[i + 1], &older) != 0 || older <= 0) {
                cli_error("trim", "--older-than needs a duration such as 30d");
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
    int rc = 0;
    if (have_age || max_rows) {
        int64_t n = store_trim(db, have_age ? (double)time(NULL) - older : 0, max_rows);
        if (n < 0) {
            cli_error("trim", "%s", store_errmsg(db));
            rc = 1;
        } else {
            printf("deleted %lld rows\n", (long long)n);
        }
    }
    if (drop_text && rc == 0) {
        int64_t n = store_drop_text(db);
        if (n < 0) {
            cli_error("trim", "%s", store_errmsg(db));
            rc = 1;
        } else {
            printf("removed text from %lld rows\n", (long long)n);
        }
    }
    store_close(db);
    return rc;
}
