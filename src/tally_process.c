/*
 * tally_process -- what is process-wide: the registry of open handles, the
 * fork handlers, and the exit handler.
 *
 * fork(): the writer thread does not survive fork, so the child handler
 * empties the rings the child inherited (their events belong to the
 * parent, which writes them), and the child's first event starts a writer
 * of its own.  Counters that run_end sums across processes live in a
 * MAP_SHARED page that each process's writer adds to.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "energy.h"

_Atomic unsigned tally__fork_gen = 0;

/* Every open handle, for the fork handlers. */
static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;

static tally_t *all_handles[256];

static int n_all_handles;

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

static void exit_init(void);

static void fork_prepare(void)
{
    pthread_mutex_lock(&all_mu);
    for (int i = 0; i < n_all_handles; i++) {
        pthread_mutex_lock(&all_handles[i]->mu);
        pthread_mutex_lock(&all_handles[i]->span_mu);
    }
}

static void fork_parent(void)
{
    for (int i = n_all_handles - 1; i >= 0; i--) {
        pthread_mutex_unlock(&all_handles[i]->span_mu);
        pthread_mutex_unlock(&all_handles[i]->mu);
    }
    pthread_mutex_unlock(&all_mu);
}

/* The process part of ids (internal.h): 6 hex digits. */
static void proc_hex(tally_t *h, uint64_t idx)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 5; i >= 0; i--, idx >>= 4) h->proc[i] = hex[idx & 15];
    h->proc[6] = 0;
}

/* Runs in the child, on the thread that called fork(); only plain stores
 * and lock-free atomics here. */
static void fork_child(void)
{
    atomic_fetch_add(&tally__fork_gen, 1);
    for (int i = 0; i < n_all_handles; i++) {
        tally_t *h = all_handles[i];
        pthread_mutex_init(&h->mu, NULL);
        pthread_mutex_init(&h->span_mu, NULL);
        pthread_cond_init(&h->wake_cv, NULL);
        pthread_cond_init(&h->done_cv, NULL);
        h->writer_running = 0;
        h->stop = 0;
        h->wake = 0;
        h->flush_req = h->flush_done = 0;
        atomic_store(&h->writer_sleeping, 0);
        h->is_child = 1;
        h->pid = (int)getpid();
        h->run_start_written = 1; /* the parent writes run_start and run_end */
        h->energy = NULL;         /* the sampler stays with the parent (docs/energy.md) */
        for (ring *r = atomic_load(&h->rings); r; r = r->next) {
            ring_reset(r);
            /* Rings of threads that do not exist here are freed by the
             * child's writer once it sees them gone. */
            if (!tally__tls_owns(r)) {
                atomic_store(&r->thread_gone, 1);
                atomic_store(&r->refs, 1);
            } else {
                tally__mirror_ring(h->shared, r); /* this thread goes on recording here */
            }
        }
        memset(&h->retired, 0, sizeof h->retired);
        memset(&h->published, 0, sizeof h->published);
        h->published_written = 0;
        h->published_settled = 0;
        h->uncommitted = 0;
        atomic_store(&h->written, 0);
        atomic_store(&h->sink_failures, 0);
        for (int k = 0; k < h->n_sinks; k++) atomic_store(&h->sinks[k].lost, 0);
        atomic_store(&h->unpriced, 0);
        h->published_unpriced = 0;
        atomic_store(&h->lost_no_ring, 0);
        /* The child's place in the run: its events keep the run's nonce. */
        uint64_t idx;
        if (h->shared) idx = atomic_fetch_add(&h->shared->processes, 1);
        else if (getrandom(&idx, sizeof idx, GRND_NONBLOCK) != (ssize_t)sizeof idx) idx = (uint64_t)getpid();
        proc_hex(h, idx);
        h->event_seq = 0;
    }
    pthread_mutex_unlock(&all_mu);
}

static void fork_init(void) { pthread_atfork(fork_prepare, fork_parent, fork_child); }

/* A child's first call starts its writer. */
void tally__child_restart(tally_t *h)
{
    pthread_mutex_lock(&h->mu);
    unsigned g = atomic_load(&tally__fork_gen);
    if (h->fork_gen != g) {
        h->fork_gen = g;
        for (int i = 0; i < h->n_sinks; i++)
            if (h->sinks[i].ops->after_fork) h->sinks[i].ops->after_fork(&h->sinks[i]);
        buf_reset(&h->line);
        writer_start(h);
    }
    pthread_mutex_unlock(&h->mu);
}

/* Each run gets 48 random bits; an event's id is those, its process's
 * place in the run and its sequence number in that process (internal.h),
 * so ids never collide across the processes of a run or across runs,
 * `tally import` can skip what it already has, and readers can tell which
 * run an event belongs to in a file that several runs share. */
void tally__new_nonce(tally_t *h)
{
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (uint64_t)tally__real_us() * 6364136223846793005ull ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)h;
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 12; i++) h->nonce[i] = hex[(r >> (4 * i)) & 15];
    h->nonce[12] = 0;
    proc_hex(h, 0);
    h->event_seq = 0;
}

void tally__register_handle(tally_t *h)
{
    pthread_mutex_lock(&all_mu);
    if (n_all_handles < (int)(sizeof all_handles / sizeof all_handles[0]))
        all_handles[n_all_handles++] = h;
    else
        tally__log(h, TALLY_LOG_WARN, "more than 256 open handles: fork() will not reset this one");
    pthread_mutex_unlock(&all_mu);
}

void tally__unregister_handle(tally_t *h)
{
    pthread_mutex_lock(&all_mu);
    for (int i = 0; i < n_all_handles; i++)
        if (all_handles[i] == h) {
            all_handles[i] = all_handles[--n_all_handles];
            break;
        }
    pthread_mutex_unlock(&all_mu);
}

/* A program that returns from main() or calls exit() without tally_close()
 * still gets what it recorded: every open handle's queue is written, and
 * (in the process that opened it) run_end with reason "not_closed".  The
 * handle is not freed (other threads may still be recording); later
 * calls on it do nothing.  Each handle gets at most EXIT_WAIT_MS: a sink
 * that hangs cannot hang the program's exit.  A forked child that ends
 * with _exit() runs no exit handlers and cannot be helped. */
#define EXIT_WAIT_MS 5000

static void flush_at_exit(void)
{
    tally_t *hs[256];
    pthread_mutex_lock(&all_mu);
    int n = n_all_handles;
    memcpy(hs, all_handles, (size_t)n * sizeof hs[0]);
    pthread_mutex_unlock(&all_mu);
    for (int i = 0; i < n; i++) {
        tally_t *h = hs[i];
        if (!h->enabled) continue;
        /* A forked child that never recorded has nothing queued. */
        if (h->fork_gen != atomic_load(&tally__fork_gen)) continue;
        tally__end_spans(h);
        if (h->energy && !h->is_child) energy_stop(h->energy, tally__mono_ns());
        writer_stop_within(h, "not_closed", EXIT_WAIT_MS);
        h->enabled = 0;
        tally__unregister_handle(h);
    }
}

static void exit_init(void) { atexit(flush_at_exit); }

static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

void tally__process_init(void)
{
    pthread_once(&fork_once, fork_init);
    pthread_once(&tls_once, tally__tls_init);
    pthread_once(&exit_once, exit_init);
}
