/*
 * tally -- the command: reads what libtally and its peers wrote and answers
 * questions about it.  One function per subcommand; this file dispatches.
 * main() is in main.c; the Python package calls tally_cli_main() itself.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "tally.h"

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"stats", cmd_stats, "cost, tokens, latency percentiles, energy per model/engine/...; training summaries"},
    {"requests", cmd_requests, "the requests behind a stats row: the slowest, the failed, the costliest"},
    {"report", cmd_report, "one HTML file with tables and charts of serving and training, for people"},
    {"runs", cmd_runs, "one line per run: kind, model, started, duration, work, final loss, reason"},
    {"tail", cmd_tail, "events as readable lines as they are appended (-f follows)"},
    {"validate", cmd_validate, "check files against the toy/v1 wire format, with line numbers"},
    {"import", cmd_import, "load JSONL files (tally, toy/v1, TelemetryLogger tags) into a database"},
    {"trim", cmd_trim, "delete old events or stored text from a database"},
    {"exporter", cmd_exporter, "serve /metrics (and send OTLP) from JSONL files as they grow"},
    {NULL, NULL, NULL},
};

/* Every command takes --opt=value as well as --opt value: the one form is
 * turned into the other before the command reads its arguments. */
static int run_command(int (*fn)(int, char **), int argc, char **argv)
{
    int extra = 0;
    for (int i = 1; i < argc; i++)
        if (argv[i][0] == '-' && argv[i][1] == '-' && argv[i][2] && strchr(argv[i], '=')) extra++;
    if (!extra) return fn(argc, argv);
    char **v = calloc((size_t)(argc + extra + 1), sizeof *v);
    char **owned = calloc((size_t)extra + 1, sizeof *owned);
    if (!v || !owned) {
        free(v);
        free(owned);
        fprintf(stderr, "tally: out of memory\n");
        return 1;
    }
    int n = 0, k = 0, rc = 1;
    for (int i = 0; i < argc; i++) {
        const char *eq = i && argv[i][0] == '-' && argv[i][1] == '-' && argv[i][2] ? strchr(argv[i], '=') : NULL;
        if (!eq) {
            v[n++] = argv[i];
            continue;
        }
        owned[k] = strndup(argv[i], (size_t)(eq - argv[i]));
        if (!owned[k]) goto out;
        v[n++] = owned[k++];
        v[n++] = (char *)eq + 1;
    }
    rc = fn(n, v);
out:
    for (int i = 0; i < k; i++) free(owned[i]);
    free(owned);
    free(v);
    return rc;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tally [--version] [--help] <command> [args]\n"
            "\n"
            "tally records what ML programs do (requests, training steps, errors)\n"
            "through libtally, and this command answers questions about it.\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; commands[i].name; i++) fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out,
            "\n"
            "Run 'tally <command> --help' for a command's options.\n"
            "Environment for programs linked with libtally:\n"
            "  TALLY_PATH=FILE     write events to FILE (overrides the program's setting)\n"
            "  TALLY_DB=FILE       also write them to this SQLite database\n"
            "  TALLY_PRICES=FILE   cost requests that come without a cost (docs/prices.md)\n"
            "  TALLY_ENERGY=1      sample GPU / CPU energy and attribute it to requests\n"
            "  TALLY_METRICS_LISTEN=HOST:PORT  serve Prometheus metrics at /metrics\n"
            "  TALLY_OTLP_ENDPOINT=URL  send spans and metrics to an OTLP/HTTP collector\n"
            "  TALLY_DISABLE=1     record nothing\n"
            "Environment for this command:\n"
            "  TALLY_ESCAPE_CONTROLS=1  show control characters in event data as \\xNN\n"
            "                           in tail and stats tables also when not on a terminal\n");
}

int tally_cli_main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
        printf("tally %s\n", tally_version());
        return 0;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; commands[i].name; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return run_command(commands[i].fn, argc - 1, argv + 1);
    fprintf(stderr, "tally: unknown command '%s' (try 'tally --help')\n", argv[1]);
    return 2;
}
