/*
 * util -- helpers every module of the library uses that need no handle:
 * the clocks, deadlines for timed waits, mkdir -p.  (Logging, which
 * needs the handle's callback, is declared in internal.h.)
 */
#ifndef TALLY_UTIL_H
#define TALLY_UTIL_H

#include <stdint.h>
#include <time.h>

int64_t tally__mono_ns(void);
int64_t tally__real_us(void);
/* curl_global_init, once per process (thread-safe). */
void tally__curl_init(void);
/* The CLOCK_REALTIME time `ns` from now, for pthread_cond_timedwait and
 * pthread_timedjoin_np. */
struct timespec tally__deadline(int64_t ns);
/* mkdir -p; with parents_only, the last component (a file name) is left. */
int tally__mkdir_p(const char *path, int parents_only);

#endif
