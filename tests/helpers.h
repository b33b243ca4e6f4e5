/*
 * helpers -- shared by the tests: temporary directories, reading event
 * files back, parsing lines with tally's own strict JSON reader.
 */
#ifndef TALLY_TEST_HELPERS_H
#define TALLY_TEST_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "json.h"
#include "tally.h"

/* A fresh directory under $TMPDIR (or /tmp); the path is static. */
const char *th_tmpdir(const char *tag);
/* rm -rf */
void th_rmrf(const char *path);

/* Lines of a file, each NUL-terminated; th_lines_free() releases them. */
typedef struct th_lines {
    char **line;
    size_t n;
    int torn_last;   /* the file did not end with a newline */
} th_lines;
int th_read_lines(const char *path, th_lines *out);
void th_lines_free(th_lines *l);

/* The memory sink's lines as a th_lines copy. */
void th_memory_lines(tally_t *h, th_lines *out);

/* The library's log lines: how many, and the last one (cfg.log = th_on_log,
 * cfg.log_ud = &a th_logs). */
typedef struct th_logs {
    int n;
    char last[512];
} th_logs;
void th_on_log(void *ud, int level, const char *msg);

/* Runs the tally command ($TALLY_CLI, set by ctest) with `args`, stdout
 * and stderr together into out; returns its exit status. */
int th_run_cli(const char *args, char *out, size_t outlen);

/* Parses a line (fails the test when it does not parse). */
const jv *th_parse(json_arena *a, const char *line);
/* Path lookup: "extra.model" */
const jv *th_get(const jv *v, const char *path);
/* Asserts a string field equals `want`. */
#define TH_STR(v, path, want) assert_string_equal(jv_str(th_get((v), (path))) ? jv_str(th_get((v), (path))) : "<absent>", (want))
#define TH_INT(v, path, want) do { const jv *x_ = th_get((v), (path)); assert_non_null(x_); assert_int_equal(x_->type, JV_NUM); assert_int_equal(jv_int(x_, -999), (want)); } while (0)
#define TH_ABSENT(v, path) assert_null(th_get((v), (path)))
#define TH_TRUE(v, path) do { const jv *x_ = th_get((v), (path)); assert_non_null(x_); assert_int_equal(x_->type, JV_TRUE); } while (0)
#define TH_FALSE(v, path) do { const jv *x_ = th_get((v), (path)); assert_non_null(x_); assert_int_equal(x_->type, JV_FALSE); } while (0)

#endif
