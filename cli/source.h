/*
 * source -- events for queries, from whatever files users already have.
 *
 * Detected by content, not by name: a file that starts with SQLite's
 * header is a database (tally's by application_id, OpenJarvis's by its
 * `telemetry` table; read-only, never modified); anything else is JSON
 * Lines (tally, toy/v1 from other producers, TelemetryLogger tagged lines); a
 * directory is searched for *.jsonl; "-" is standard input;
 * clickhouse://HOST:PORT/DATABASE is tally's events table there.
 *
 * Every event becomes one `row` (src/row.h), the flat record the commands
 * aggregate.  A tally database can also answer with its rollup's cells
 * (src/rollup.h) instead of rows: one cell per minute and key.
 */
#ifndef TALLY_CLI_SOURCE_H
#define TALLY_CLI_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "read_sqlite.h"

/* The longest line a reader keeps (longer ones are skipped, said so), and
 * how many skipped lines are reported one by one before a count. */
#define SOURCE_MAX_LINE ((size_t)16 << 20)
#define SOURCE_MAX_REPORTED 10

/* Reads every source in `paths` (FILE, DIR, DB or "-").  With more than
 * one, events are merged by id: the same event from a run directory and
 * from the database imported from it counts once (databases are then read
 * as rows, not rollup cells, and lines without an id get the one `tally
 * import` gives them).  Returns 0, or -1 with a one-line reason in err. */
int source_read_all(char **paths, int n, const source_opts *o, row_fn fn, void *ud, source_stats *st, char *err,
                    size_t errlen);

/* One JSONL file (or "-"): every event line as a row, in order; the one
 * reading of JSON Lines that stats, runs and import share.  Lines that do
 * not parse are counted (st->bad, st->torn for a torn last line) and the
 * first few reported on stderr.  With give_ids, lines without an id get
 * the one `tally import` stores (run, byte offset, content) and rows carry
 * the line as `json`.  fn returning non-zero stops.  0, or -1 with err. */
int source_read_jsonl(const char *path, const source_opts *o, row_fn fn, void *ud, source_stats *st, char *err,
                      size_t errlen, int give_ids);
/* One line of a JSONL file as every reader of them takes it: what it is
 * (LINE_EVENT: e filled; LINE_BAD: why says why; LINE_TORN: a torn last
 * line; LINE_SKIP: empty, or outside --since/--until).  With give_ids, a
 * line without an id gets the one `tally import` stores (from the run,
 * the line's byte offset and its content, in idbuf) and e->json is the
 * line; otherwise the line is changed (parsed in place). */
enum { LINE_SKIP, LINE_EVENT, LINE_TORN, LINE_BAD };
#define SOURCE_ID_LEN 34
typedef struct line_info {
    int complete, toolong;    /* from lr_next */
    uint64_t offset;          /* the line's byte offset in its file */
    int give_ids;
} line_info;
struct json_arena;
struct row_ctx;
struct row;
int source_line(struct json_arena *a, struct row_ctx *ctx, char *line, size_t len, const line_info *li,
                const source_opts *o, struct row *e, char idbuf[SOURCE_ID_LEN], char *why, size_t whylen);
/* One JSONL file as source_read_jsonl reads it, with o->threads threads
 * (in file order) when it is a regular file and not --strict. */
int source_read_file(const char *path, const source_opts *o, row_fn fn, void *ud, source_stats *st, char *err,
                     size_t errlen, int give_ids);
/* A line skipped: counted, and reported on stderr for the first few. */
void source_report(source_stats *st, const char *path, uint64_t line, const char *why);
/* Why a line is not an event (toolong, or the parse's answer v / je). */
struct jv;
struct json_error;
void source_why(char *why, size_t n, int toolong, const struct jv *v, const struct json_error *je);
/* 1 when the event is within --since / --until. */
int source_in_range(const source_opts *o, const row *r);
/* "... N more lines skipped", when more were skipped than reported. */
void source_report_more(const source_stats *st);

/* What kind of source a path is: 0 JSONL, 1 tally DB, 2 OpenJarvis DB,
 * SOURCE_CLICKHOUSE for a clickhouse:// URL, -1 error. */
enum { SOURCE_CLICKHOUSE = 3 };
int source_kind(const char *path, char *err, size_t errlen);

#endif
