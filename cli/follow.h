/*
 * follow -- reading a file as it grows (tail -f): whole lines only, across
 * truncation (read again from the start) and rotation (the old file
 * finished, the new one read from its start).  Used by `tail -f` and
 * `exporter`.
 */
#ifndef TALLY_FOLLOW_H
#define TALLY_FOLLOW_H

#include <stdio.h>
#include <sys/types.h>

#include "buf.h"

typedef struct follower {
    FILE *f;
    dev_t dev;
    ino_t ino;
    off_t pos;          /* bytes read so far */
    off_t line_at;      /* where the line waiting in `pending` starts */
    buf pending;        /* a line still waiting for its newline */
} follower;

/* fn gets each whole line (without its newline) and the offset where it starts. */
typedef void (*follow_fn)(void *ud, const char *line, size_t len, off_t at);

/* Opens path at its start, or its end.  -1 (errno) when it cannot. */
int follow_open(follower *fw, const char *path, int from_end, size_t max_line);
/* Every whole line from the current position. */
void follow_drain(follower *fw, follow_fn fn, void *ud);
/* Looks at the path again: a rotated file is finished and the new one
 * opened; a truncated one is read from its start.  Returns 1 when either
 * happened (and the file starts over), 0 otherwise. */
int follow_check(follower *fw, const char *path, follow_fn fn, void *ud);
void follow_close(follower *fw);

#endif
