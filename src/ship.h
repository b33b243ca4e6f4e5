/*
 * ship -- delivery of batches to a server over HTTP, shared by the OTLP
 * exporter and the ClickHouse sink (docs/internals.md, "Shipping").
 *
 * A sink hands the shipper sealed batches (bodies ready to POST); a
 * sender thread of the shipper posts them in order through the sink's
 * `post` function, which says what the answer means:
 *   SHIP_OK      delivered;
 *   SHIP_RETRY   the server is away, busy or slow: the batch goes to the
 *                spool (or stays first in memory) and is tried again after
 *                a backoff (Retry-After when the server gave one, else
 *                exponential, capped at 60 s, with jitter);
 *   SHIP_REJECT  retrying cannot help (a malformed row): the items are
 *                counted as lost, the server's message logged by the sink,
 *                and a spooled batch set aside in <spool>/rejected/ with
 *                the message beside it (NAME.reason).
 *
 * The spool: while the server cannot be reached, batches are files in the
 * spool directory, named so that their order is their age, replayed
 * oldest first when it answers again -- by this process or by the next
 * one to open the same spool.  A file is claimed by renaming it, so two
 * processes never send the same one, and a file a dead process held is
 * taken back.  Beyond the spool's cap batches are dropped and counted.
 *
 * Batches can also be built up inside the shipper (ship_append): bodies
 * that concatenate (one row per line) are gathered into one open batch,
 * sealed when it is full, when it is older than `linger_ms` (the sender
 * thread sees to that even when no more rows come), or on a sync.
 */
#ifndef TALLY_SHIP_H
#define TALLY_SHIP_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "tally.h"

typedef struct ship ship;

enum { SHIP_OK, SHIP_RETRY, SHIP_REJECT };

/* A response: its body (capped) and Retry-After in seconds (-1: none). */
typedef struct ship_resp {
    buf body;
    long retry_after_s;
    long status;             /* HTTP status; -1: not reached */
    char error[256];         /* why not reached */
} ship_resp;

typedef struct ship_conf {
    const char *what;         /* the server, in messages: "OTLP collector", "ClickHouse" */
    /* Posts one batch (on the sender thread) and classifies the answer;
     * `reason` (capped) gets the server's message for a SHIP_REJECT. */
    int (*post)(void *ud, ship *s, const char *body, size_t len, uint32_t items, long *retry_after,
                char *reason, size_t reason_len);
    /* Called on the sender thread every tick_ms and once at close (NULL: none). */
    void (*tick)(void *ud, ship *s);
    uint32_t tick_ms;
    void *ud;
    const char *spool;        /* directory, NULL = memory only */
    uint64_t spool_max_bytes; /* 0 = 256 MiB */
    uint32_t backoff_ms;      /* 0 = 1000 */
    size_t queue_bytes;       /* sealed batches held in memory: 0 = 16 MiB */
    size_t batch_bytes;       /* ship_append's seal size: 0 = 1 MiB */
    uint32_t batch_items;     /* ship_append's seal count: 0 = 512 */
    uint32_t linger_ms;       /* ship_append's seal age: 0 = 1000 */
    tally_log_fn log;
    void *log_ud;
    _Atomic uint64_t *lost;   /* where losses are counted (NULL: its own) */
    int plain;                /* 1: never gzip bodies */
} ship_conf;

ship *ship_open(const ship_conf *c);
/* A sink's spool directory: $env_name, else `configured`, else beside the
 * handle's JSONL file or database with `suffix` (def holds it); NULL when
 * none of them (memory only). */
struct tally;
const char *ship_spool_dir(const struct tally *h, const char *env_name, const char *configured, const char *suffix,
                           char *def, size_t n);
/* A sealed batch of `items` (copied).  -1 when it could be neither queued
 * nor spooled (its items counted as lost). */
int ship_batch(ship *s, const char *body, size_t len, uint32_t items);
/* Rows that join the open batch (see above); `sync` seals it. */
int ship_append(ship *s, const char *body, size_t len, uint32_t items, int sync);
/* Seals the open batch and waits (up to `ms`) until the queue in memory
 * is empty: delivered, spooled or lost.  0 when it is. */
int ship_drain(ship *s, uint32_t ms);
uint64_t ship_sent(const ship *s);
/* In a forked child: the parent's queue and thread stay with the parent. */
void ship_after_fork(ship *s);
/* Delivers what it can within 2 s, spools the rest, stops. */
void ship_close(ship *s);

__attribute__((format(printf, 3, 4))) void ship_log(ship *s, int level, const char *fmt, ...);

/* One POST on the sender's kept-alive connection.  `headers` are extra
 * "Name: value" lines; `user`/`password` (may be NULL) as basic auth; the
 * body is gzipped unless the server said it takes no compressed bodies
 * (415: then it is sent again plain, and plain from then on).  Fills r
 * (free it with ship_resp_free); returns r->status. */
struct curl_slist;
long ship_http(ship *s, const char *url, const struct curl_slist *headers, const char *user, const char *password,
               const char *body, size_t len, ship_resp *r);
void ship_resp_free(ship_resp *r);

#endif
