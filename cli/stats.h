/*
 * stats -- what `tally stats` is made of (cli/ only):
 *   stats_group.c   keys (--by / --where) and groups: one agg_cell each
 *   stats_output.c  the column table, and the table, --csv and --json
 *                   drawn from it (so the three cannot disagree)
 *   cmd_stats.c     the command: options, sources, then output
 */
#ifndef TALLY_CLI_STATS_H
#define TALLY_CLI_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "agg.h"
#include "hindex.h"
#include "prices.h"
#include "record.h"
#include "source.h"

#define MAX_BY 8

#define MAX_WHERE 16

#define MAX_GROUPS 100000

#define MAX_KEY 2048

typedef struct group {
    char *key;                 /* the --by values joined by '\x1f' */
    size_t keylen;
    uint64_t hash;
    agg_cell c;
} group;

typedef struct where {
    int key;
    int neg;
    const char *value;
    size_t len;
} where;

typedef struct agg {
    int by[MAX_BY], nby;
    where w[MAX_WHERE];
    int nw;
    group **g;
    size_t ng, cap;
    hindex idx;          /* over g, by hash */
    int too_many, nomem;
    prices prices;       /* --prices: re-cost every request */
    int reprice;
} agg;

/* Keys: first one per named request field (src/fields.h, in its order),
 * then the event's own. */
enum { K_RUN = RQ_NLABELS, K_PHASE, K_KIND, K_OK, K_ERROR, K_DEGRADED, K_DAY, K_HOUR, K_N };

/* stats_group.c */
const char *key_name(int k);
int key_index(const char *s);
void key_list(char *out, size_t n);           /* "model, engine, ..., hour" */
int key_in_rollup(int k);
/* 1 when a database's rollup can answer: every --by key of `a` and every
 * --where key in w is one of its keys. */
int keys_in_rollup(const agg *a, const where *w, int nw);
/* The next item of a comma-separated list into tok: 1, 0 when it was cut
 * (longer than tok), -1 at the end. */
#define LIST_ITEM_MAX 64
int list_next(const char **p, char tok[LIST_ITEM_MAX]);
/* --by KEYS (comma-separated) into a->by; -1 (said, as `cmd`) when a key is unknown. */
int by_parse(agg *a, const char *spec, const char *cmd);
int on_row(void *ud, const row *e);           /* a source's row into its group */
/* The value of key k for an event ("-" when it has none; tmp for days). */
sv key_value(const row *e, int k, char *tmp, size_t n);
/* One --where KEY=VALUE / KEY!=VALUE into w[*nw]; -1 (said) when it is not one. */
int where_parse(where *w, int *nw, const char *val, const char *cmd);
/* 1 when the event passes every --where. */
int where_pass(const where *w, int nw, const row *e);
int on_cell(void *ud, const rollup_key *k, const agg_cell *c);
/* A thread's own aggregate for the same question, and merging it back
 * (freeing it): cli/par.h's fork and join. */
void *agg_fork(void *ud);
int agg_join(void *ud, void *part);
/* The same for an aggregate inside another: t set up empty for a's
 * question; t's groups merged into a (t left empty).  agg_merge returns
 * a->nomem. */
void agg_like(agg *t, const agg *a);
int agg_merge(agg *a, agg *t);

/* stats_output.c */
int cmp_group(const void *a, const void *b);
/* The aligned table of the requests (training 0) or the training section,
 * after `heading` (NULL: none): `chosen` (a mask from columns_parse) or,
 * NULL, the default columns that fit 120 characters.  Returns the rows
 * printed (0: nothing at all was printed). */
size_t print_table(agg *a, int training, const uint64_t *chosen, const char *heading);
/* --columns LIST (names or headings, comma-separated, or "all") into a
 * mask; -1 (said) for an unknown name. */
int columns_parse(const char *list, uint64_t *mask);
void print_csv(agg *a);
void print_json(agg *a, const source_stats *st);
/* The --json object, appended to b (no newline). */
void stats_json(agg *a, const source_stats *st, buf *b);

#endif
