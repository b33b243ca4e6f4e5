/*
 * store_ckpt -- the checkpointer: copies the WAL into the database on a connection and thread of its own (see store.c's top comment)
 */
#include "store_int.h"

#include <stdlib.h>

static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    ckpt *c = arg;
    pthread_mutex_lock(&c->mu);
    c->frames = frames;
    if (frames >= CK_START_FRAMES) pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return SQLITE_OK;
}

static void *ckpt_main(void *arg)
{
    ckpt *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->stop && !c->want_all && c->frames < CK_START_FRAMES) pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop) break;
        c->frames = 0;
        pthread_mutex_unlock(&c->mu);
        int log = -1, copied = -1;
        int rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
        pthread_mutex_lock(&c->mu);
        c->passes++;
        c->all_copied = rc == SQLITE_OK && log >= 0 && copied == log;
        if (c->all_copied) c->want_all = 0;
        pthread_cond_broadcast(&c->done_cv);
        if (c->want_all && rc != SQLITE_OK) {
            /* Busy (a reader holds old frames): try again a little later. */
            pthread_mutex_unlock(&c->mu);
            sqlite3_sleep(5);
            pthread_mutex_lock(&c->mu);
        }
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

ckpt *store_ckpt_start(store *s, const char *path)
{
    ckpt *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK ||
        exec(c->db, "PRAGMA journal_mode=WAL")) {
        sqlite3_close(c->db);
        free(c);
        return NULL;
    }
    sqlite3_busy_timeout(c->db, 100);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    pthread_cond_init(&c->done_cv, NULL);
    if (pthread_create(&c->th, NULL, ckpt_main, c) != 0) {
        sqlite3_close(c->db);
        free(c);
        return NULL;
    }
    pthread_setname_np(c->th, "tally-ckpt");
    sqlite3_wal_hook(s->db, wal_hook, c);
    return c;
}

void store_ckpt_stop(store *s)
{
    ckpt *c = s->ck;
    if (!c) return;
    sqlite3_wal_hook(s->db, NULL, NULL);
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->th, NULL);
    sqlite3_close(c->db);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    pthread_cond_destroy(&c->done_cv);
    free(c);
    s->ck = NULL;
}

/* After a commit: when the log has outgrown CK_MAX_FRAMES, wait (boundedly)
 * until the checkpointer has copied all of it, so that the next
 * transaction starts the log again from its beginning. */
void store_ckpt_bound(store *s)
{
    ckpt *c = s->ck;
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    if (c->frames >= CK_MAX_FRAMES) {
        c->want_all = 1;
        c->all_copied = 0;
        pthread_cond_signal(&c->cv);
        struct timespec dl = tally__deadline((int64_t)CK_WAIT_MS * 1000000);
        while (c->want_all && !c->all_copied)
            if (pthread_cond_timedwait(&c->done_cv, &c->mu, &dl) != 0) break;
        c->want_all = 0;
    }
    pthread_mutex_unlock(&c->mu);
}
