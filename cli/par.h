/*
 * par -- JSONL files read by every core: cut at line boundaries into
 * chunks, each parsed by a thread.  Three ways to take what the threads
 * make: a consumer per thread, merged at the end (stats); rows handed on
 * in file order on the calling thread (requests, runs, report, import);
 * or each line turned into bytes, handed on in file order (validate).
 * par.c says how a chunk's reader gets the context the lines before it
 * make.
 */
#ifndef TALLY_CLI_PAR_H
#define TALLY_CLI_PAR_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "read_sqlite.h"
#include "source.h"

/* What a question gives the parallel reader: a consumer per thread,
 * rows into it, and merging it into the question's own (ud) at the end
 * (join frees the part; non-zero: it failed). */
typedef struct par_ops {
    void *(*fork)(void *ud);
    row_fn row;
    int (*join)(void *ud, void *part);
    /* Optional: the part of the question that depends on the order of
     * lines, given every row in file order on the calling thread. */
    row_fn ordered;
} par_ops;

/* The threads for `asked` (0: the cores available). */
int par_threads(int asked);
/* The chunk size: 2 MiB (1 MiB in file order), or TALLY_CHUNK_BYTES (the
 * tests' tiny chunks). */
uint64_t par_chunk_bytes(int ordered);

/* Reads the JSONL files (regular files; not "-") with o->threads threads.
 * With ops, each thread's rows go to its own consumer (ops->fork), merged
 * into ud at the end.  Without, the threads parse and fn(ud, row) is
 * called on the calling thread with every event in file order, exactly as
 * the one-thread reader would (give_ids as for source_read_jsonl): for
 * questions whose answer depends on the order.  0, or -1 with a reason in
 * err. */
int source_read_par(char **files, size_t nfiles, const source_opts *o, const par_ops *ops, row_fn fn, void *ud,
                    int give_ids, source_stats *st, char *err, size_t errlen);

/* Lines of JSONL files, each turned into bytes by a thread, the bytes of
 * each chunk handed on in file order (`tally validate`).  line() runs on
 * a thread: one line (lineno: its number within its chunk) into out; 0,
 * or -1 to stop (out is full).  take() runs on the calling thread, for
 * each chunk in order: what its lines gave; its lines are numbered after
 * `before` in its file; `last`: the file's last chunk; non-zero stops. */
typedef struct par_out {
    size_t file;
    const buf *out;
    uint64_t before, lines;
    int last;
} par_out;
typedef struct par_lines {
    int (*line)(struct json_arena *a, char *line, size_t len, const line_info *li, uint64_t lineno, buf *out);
    int (*take)(void *ud, const par_out *u);
} par_lines;
int par_read_lines(char **files, size_t nfiles, int threads, const par_lines *pl, void *ud, char *err, size_t errlen);

#endif
