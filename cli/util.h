/*
 * util -- small pieces the subcommands share: time and duration parsing,
 * a line reader with a cap, file discovery, hashing.
 */
#ifndef TALLY_CLI_UTIL_H
#define TALLY_CLI_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* "90s", "30m", "24h", "7d", "2w"; a bare number is refused.  0 or -1. */
int parse_duration(const char *s, double *seconds);
/* --since / --until: a duration back from `now`, or an ISO-8601 time. */
int parse_when(const char *s, double now, double *out);

/* Reads lines of any length up to `max`; longer lines are returned with
 * *toolong set (their content cut).  The last line may lack '\n':
 * *complete says whether it ended with one. */
typedef struct line_reader {
    FILE *f;
    int own;
    int lent;             /* blk is the caller's (lr_open_bytes) */
    char *buf;            /* the line returned (when it spans blocks) */
    size_t cap, max;
    char *blk;            /* read-ahead block */
    size_t blen, bpos;
    int eof;
    uint64_t offset;   /* byte offset of the line last returned */
    uint64_t next;     /* byte offset of the next line */
    uint64_t lineno;
} line_reader;

int lr_open(line_reader *lr, const char *path, size_t max);   /* "-" = stdin */
/* A reader of `path` from byte `at` whose first n bytes the caller has
 * already read into blk (cap >= LR_BLOCK bytes, lent until lr_close): the
 * lines come from them, then from the file after them. */
#define LR_BLOCK ((size_t)1 << 20)
int lr_open_bytes(line_reader *lr, const char *path, uint64_t at, char *blk, size_t n, size_t cap, size_t max);
/* 1 = a line, 0 = end, -1 = read error. */
int lr_next(line_reader *lr, char **line, size_t *len, int *complete, int *toolong);
void lr_close(line_reader *lr);

/* Expands FILE|DIR arguments: a directory yields its *.jsonl files (and
 * runs/<id>/events.jsonl), sorted; depth-limited.  Returns a NULL-ended
 * malloc'd array; *n its length. */
char **collect_jsonl(char **args, int nargs, size_t *n, char *err, size_t errlen);
void free_list(char **list);

/* 128-bit FNV-1a pair, as "x" + 31 hex digits: the id of a line from a
 * producer that writes none, from its run, byte offset and content (the
 * same in `tally import` and in readers that merge sources by id). */
void hash_id(const char *a, size_t an, uint64_t b, const char *c, size_t cn, char out[34]);

/* The run a JSONL file belongs to when it names none: the directory of
 * runs/<run_id>/events.jsonl, else the file name ("stdin" for "-"). */
void run_id_from_path(const char *path, char *out, size_t n);

/* Copies src[0..n) into dst (NUL-terminated, at most cap bytes) with
 * control characters (C0 but not newline, DEL, C1) written as \xNN.
 * Returns the length written. */
size_t cli_escape_ctl(const char *src, size_t n, char *dst, size_t cap);
/* stdout, or on a terminal (or with TALLY_ESCAPE_CONTROLS set) a stream
 * over it that escapes control characters from event data. */
FILE *cli_safe_stdout(void);

/* Prints "tally CMD: message" to stderr. */
void cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* --threads N for the commands that read JSONL: N into *threads, or -1
 * with the error said.  THREADS_HELP is its line in their --help. */
int cli_threads(const char *cmd, const char *val, int *threads);
#define THREADS_HELP "  --threads N      read JSONL with N threads (default: every core; 1: one)\n"

/* One CSV field: quoted when it holds a comma, a quote or a newline. */
void cli_csv_field(FILE *out, const char *s);
/* A cost in USD for people: 2 decimals from $100, else 4, and more while
 * a cost that is not zero would print as zero; `+` appended when plus. */
void cli_fmt_usd(double v, int plus, char *out, size_t n);
/* A JSON string: quoted, escaped (NULL: null). */
void cli_json_str(FILE *out, const char *s);

#endif
