/*
 * sink_callback -- the subscriber (OpenJarvis's EventBus): the caller's
 * function is called on the writer thread with every encoded event.
 */
#include <stdlib.h>

#include "internal.h"

typedef struct cbsink {
    tally_event_fn fn;
    void *ud;
} cbsink;

static int cb_write(sink *s, const wev *ev, const struct row *r, const char *line, size_t len)
{
    (void)r;
    (void)ev;
    cbsink *c = s->state;
    c->fn(c->ud, line, len);
    return 0;
}

static void cb_close(sink *s)
{
    free(s->state);
    s->state = NULL;
}

static const sink_ops cb_ops = {"subscriber", 0, cb_write, NULL, NULL, cb_close};

int sink_callback_open(struct tally *h, sink *s, tally_event_fn fn, void *ud)
{
    cbsink *c = calloc(1, sizeof *c);
    s->ops = &cb_ops;
    s->h = h;
    s->state = c;
    if (!c) return -1;
    c->fn = fn;
    c->ud = ud;
    return 0;
}
