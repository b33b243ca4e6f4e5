/*
 * clickhouse -- tally's events in ClickHouse, over its HTTP interface
 * (docs/clickhouse.md): where a server is, its credentials, the tables
 * (from the field table, src/fields.h), a row as a TabSeparated line, and
 * one request.
 *
 * A target is `clickhouse://HOST:PORT/DATABASE` (`clickhouses://` for
 * TLS).  Credentials come from the environment, never from the URL:
 * TALLY_CLICKHOUSE_USER, and TALLY_CLICKHOUSE_PASSWORD or a file named by
 * TALLY_CLICKHOUSE_PASSWORD_FILE; they are sent as HTTP basic auth.
 *
 * Exactly once: events go into a ReplacingMergeTree ordered by (kind,
 * model, engine, ts, id), so a batch sent twice (a retry after a time-out,
 * an import run again) leaves rows with the same key that the server
 * merges into one; tally's queries read the table with FINAL, so they
 * never count a row twice even before that merge.
 */
#ifndef TALLY_CLICKHOUSE_H
#define TALLY_CLICKHOUSE_H

#include <stddef.h>

#include "buf.h"
#include "row.h"

#define CH_SCHEMA_VERSION 1

typedef struct ch_target {
    char base[512];          /* http(s)://HOST:PORT/ */
    char db[128];
    char user[128];
    char *password;          /* from the environment or its file; NULL: none */
} ch_target;

/* 1 when `s` names a ClickHouse target (clickhouse:// or clickhouses://). */
int ch_is_url(const char *s);
/* Parses the URL and reads the credentials from the environment.  0, or
 * -1 with a reason (that never holds the password). */
int ch_target_init(ch_target *t, const char *url, char *err, size_t errlen);
void ch_target_free(ch_target *t);

/* One request: POST `body` (may be NULL) with `sql` as the query.  The
 * response body goes to `out` (NULL: dropped).  Returns the HTTP status,
 * or -1 when the server could not be reached (err says why). */
long ch_request(const ch_target *t, const char *sql, const char *body, size_t len, buf *out, char *err,
                size_t errlen);

/* A query whose answer is read line by line as it arrives (bounded
 * memory): fn gets each line without its newline; non-zero stops.
 * Returns the HTTP status, or -1. */
typedef int (*ch_line_fn)(void *ud, char *line, size_t len);
long ch_query_lines(const ch_target *t, const char *sql, ch_line_fn fn, void *ud, char *err, size_t errlen);

/* Creates the database and tables when missing, and checks the schema's
 * version.  0, or -1 with a reason. */
int ch_create_schema(const ch_target *t, char *err, size_t errlen);

/* " FINAL" when the events table may hold two rows of one event (queries
 * then read it de-duplicated), "" when it cannot (every partition one
 * merged part). */
const char *ch_final(const ch_target *t);

/* The event as one TabSeparated line (with its '\n') for the events
 * table, its columns in the table's order ("INSERT ... FORMAT
 * TabSeparated"). */
void ch_row_tsv(buf *b, const row *r);

/* One TabSeparated value: a tab, then v with ClickHouse's escapes. */
void ch_tsv_str(buf *b, sv v);
/* Splits a TabSeparated line (no newline) into at most `max` fields,
 * undoing the escapes in place; a NULL stays the two characters \N.
 * Returns the number of fields. */
int ch_tsv_split(char *line, size_t len, char **f, size_t *fl, int max);

/* The columns of the events table, in the order ch_row_tsv writes them:
 * for SELECTs that read rows back. */
const char *ch_columns(void);

#endif
