/*
 * read_sqlite -- events for queries from SQLite databases (tally's own,
 * and OpenJarvis telemetry databases), and the types every source shares
 * (cli/source.h reads files and directories with the same ones).
 */
#ifndef TALLY_READ_SQLITE_H
#define TALLY_READ_SQLITE_H

#include <stddef.h>
#include <stdint.h>

#include "agg.h"
#include "rollup.h"
#include "row.h"

typedef int (*row_fn)(void *ud, const row *r);                                /* non-zero stops */
typedef int (*cell_fn)(void *ud, const rollup_key *k, const agg_cell *c);     /* non-zero stops */

typedef struct source_opts {
    double since, until;      /* 0 = open */
    int strict;               /* stop at the first bad line */
    /* With `cells`, a tally database gives whole minutes as rollup cells
     * and only the minutes cut by since/until as rows. */
    cell_fn cells;
    /* With `cells` and ch_pushdown, ClickHouse answers with one cell per
     * group of these keys (`tally stats`'s K_* numbers, cli/stats.h), the
     * --where conditions it can test given as SQL in ch_where (NULL: none). */
    int ch_pushdown;
    /* Rows of a tally database carry their line (`json`; whole reads only). */
    int with_json;
    /* JSONL files read by `threads` threads (0: every core, 1: one) when
     * the question gives `par` (cli/par.h): a consumer per thread. */
    int threads;
    const struct par_ops *par;
    /* Optional, for a reader in file order with every core: the rows of
     * a chunk at once (valid during the call; non-zero stops), instead of
     * one by one to the row function. */
    int (*rows)(void *ud, const row *rows, size_t n);
    int ch_keys[16];
    int n_ch_keys;
    const char *ch_where;
} source_opts;

typedef struct source_stats {
    uint64_t lines, events, bad, torn;
    uint64_t duplicates;         /* events met again in another source, counted once */
    uint64_t cells, rows_read;   /* from databases: rollup cells, rows */
    int reported;
} source_stats;

enum { READ_SQLITE_TALLY = 1, READ_SQLITE_OPENJARVIS = 2 };

/* What a file is: 0 not a SQLite database, READ_SQLITE_TALLY,
 * READ_SQLITE_OPENJARVIS, or -1 (unreadable, or someone else's database)
 * with a one-line reason in err. */
int read_sqlite_kind(const char *path, char *err, size_t errlen);

/* Reads a database of `kind` into rows (and, for tally's with o->cells,
 * whole minutes as rollup cells).  0, or -1 with a reason in err. */
int read_sqlite(const char *path, int kind, const source_opts *o, row_fn fn, void *ud, source_stats *st, char *err,
                size_t errlen);

#endif
