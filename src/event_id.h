/*
 * event_id -- the layout of an event's `id`, shared by the writer that
 * makes ids and the readers that attribute events to runs.
 *
 * 12 hex digits name the run (random; the same in its forked children),
 * 6 the process within the run (000000 for the process that opened the
 * handle, then 1, 2, ... as children are forked), and 10 the sequence in
 * that process.  A reader attributes an event to its run by the first 12
 * -- right also when several runs append to one file -- and to its writer
 * (for `t` never decreasing) by the first 18.  Ids of other lengths come
 * from older tally versions (12 + 10: the first 12 named the process) or
 * from import (x + 31 hex digits).
 */
#ifndef TALLY_EVENT_ID_H
#define TALLY_EVENT_ID_H

#define TALLY_ID_RUN 12
#define TALLY_ID_WRITER 18
#define TALLY_ID_LEN 28

#endif
