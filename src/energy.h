/*
 * energy -- device energy readings and their attribution to requests.
 *
 * Samplers (one background thread, started only when asked) read:
 *   - NVIDIA GPUs through NVML, loaded at run time with dlopen (no build
 *     dependency): the total-energy counter where the GPU has one, else
 *     power integrated over time; utilization, memory used, temperature;
 *   - CPU packages and DRAM through /sys/class/powercap (intel-rapl and
 *     AMD's equivalent), handling counter wrap.
 *
 * Attribution: a device's energy over a sampling interval is shared among
 * the requests in flight on it in proportion to their time in flight in
 * that interval.  With L the request-seconds in flight in the interval
 * (the integral of the in-flight count) and dE the counter's change, each
 * request gets dE * (its seconds in the interval) / L; an interval with
 * nothing in flight is idle energy.  So attributed + idle == the counter's
 * change, exactly.  Implementation: a cumulative R(t) = integral of dE/L
 * over time; a request that ran from b to e gets R(e) - R(b).
 */
#ifndef TALLY_ENERGY_H
#define TALLY_ENERGY_H

#include <stdint.h>

#include "tally.h"

#define ENERGY_MAX_DEVICES 16

typedef struct energy energy;

typedef struct energy_device_total {
    char name[48];
    double total_j, idle_j;
    double util_pct, mem_used_mb, temp_c;  /* last readings (NAN when none) */
} energy_device_total;

/* Finds the devices and starts the sampler thread.  NULL when nothing can
 * be read (said once through the log callback).  Test hooks:
 * TALLY_NVML_LIB (the NVML library to load), TALLY_POWERCAP_ROOT. */
energy *energy_start(struct tally *h, uint32_t interval_ms);
/* Takes a last sample at `now_ns` and stops the thread. */
void energy_stop(energy *e, int64_t now_ns);
void energy_free(energy *e);

/* A request begins / ends on `device` (0 = every device, k = device k-1),
 * at monotonic time t_ns.  Called on the recording threads.  Returns the
 * time used, which is t_ns or, if a sample closed its interval in the
 * meantime, that sample's time; the request's span must use it. */
int64_t energy_begin(energy *e, int device, int64_t t_ns);
int64_t energy_end(energy *e, int device, int64_t t_ns);

/* Monotonic time of the last sample: requests that ended before it can be
 * attributed. */
int64_t energy_ready_until(energy *e);
/* Joules for a request that ran from b_ns to e_ns on `device`; -1 when its
 * start is older than the kept history. */
double energy_of(energy *e, int device, int64_t b_ns, int64_t e_ns);
/* Mean utilization over the devices the request ran on (NAN if none). */
double energy_util(energy *e, int device);

int energy_devices(energy *e, energy_device_total *out, int max);

/* For tests: the attribution arithmetic without threads or devices. */
energy *energy_new_manual(int ndevices);
void energy_tick(energy *e, int device, int64_t t_ns, double counter_j);

#endif
