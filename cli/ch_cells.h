/*
 * ch_cells -- `tally stats`'s question asked of ClickHouse (ch_cells.c).
 */
#ifndef TALLY_CLI_CH_CELLS_H
#define TALLY_CLI_CH_CELLS_H

#include "buf.h"
#include "clickhouse.h"
#include "read_sqlite.h"

struct where;
/* The --where conditions a ClickHouse query can test, as " AND ..." SQL. */
void ch_where_sql(const struct where *w, int nw, buf *out);

/* The requests of t's events table (read with `final`, ch_final()) within
 * `time_sql` (" AND ts ..." or "") as cells, one per group of o->ch_keys,
 * to o->cells.  0, or -1 with a reason in err. */
int ch_read_cells(const ch_target *t, const char *final, const char *time_sql, const source_opts *o, void *ud,
                  source_stats *st, char *err, size_t errlen);

#endif
