/*
 * sink_memory -- keeps every event line in memory (TelemetryLogger's MemoryLogger),
 * for tests and for programs that inspect their own telemetry.  Capped at
 * `max_events`: past it, events are counted as sink failures, not kept.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct memsink {
    pthread_mutex_t mu;
    char **lines;
    size_t *lens;
    size_t n, cap, max;
} memsink;

static int mem_write(sink *s, const wev *ev, const struct row *r, const char *line, size_t len)
{
    (void)r;
    (void)ev;
    memsink *m = s->state;
    pthread_mutex_lock(&m->mu);
    int rc = -1;
    if (m->n < m->max) {
        if (m->n == m->cap) {
            size_t nc = m->cap ? m->cap * 2 : 64;
            if (nc > m->max) nc = m->max;
            char **nl = realloc(m->lines, nc * sizeof *nl);
            if (nl) m->lines = nl;
            size_t *nn = realloc(m->lens, nc * sizeof *nn);
            if (nn) m->lens = nn;
            if (nl && nn) m->cap = nc;
        }
        char *copy = m->n < m->cap ? malloc(len + 1) : NULL;
        if (copy) {
            memcpy(copy, line, len);
            copy[len] = 0;
            m->lines[m->n] = copy;
            m->lens[m->n] = len;
            m->n++;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

static void mem_clear(memsink *m)
{
    for (size_t i = 0; i < m->n; i++) free(m->lines[i]);
    m->n = 0;
}

static void mem_after_fork(sink *s)
{
    memsink *m = s->state;
    pthread_mutex_init(&m->mu, NULL);
    mem_clear(m);
}

static void mem_close(sink *s)
{
    memsink *m = s->state;
    mem_clear(m);
    free(m->lines);
    free(m->lens);
    pthread_mutex_destroy(&m->mu);
    free(m);
    s->state = NULL;
}

static const sink_ops mem_ops = {"memory", 0, mem_write, NULL, mem_after_fork, mem_close};

int sink_memory_open(struct tally *h, sink *s, size_t max_events)
{
    memsink *m = calloc(1, sizeof *m);
    s->ops = &mem_ops;
    s->h = h;
    s->state = m;
    if (!m) return -1;
    pthread_mutex_init(&m->mu, NULL);
    m->max = max_events;
    return 0;
}

size_t sink_memory_count(sink *s)
{
    memsink *m = s->state;
    if (!m) return 0;
    pthread_mutex_lock(&m->mu);
    size_t n = m->n;
    pthread_mutex_unlock(&m->mu);
    return n;
}

void sink_memory_foreach(sink *s, int (*fn)(void *, const char *, size_t), void *ud)
{
    memsink *m = s->state;
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->n; i++)
        if (fn(ud, m->lines[i], m->lens[i])) break;
    pthread_mutex_unlock(&m->mu);
}
