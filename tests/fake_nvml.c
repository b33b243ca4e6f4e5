/*
 * fake_nvml -- a stand-in for libnvidia-ml.so for tests on machines with no
 * GPU.  One device whose energy counter grows at FAKE_NVML_WATTS (default
 * 250 W) from the first call; FAKE_NVML_NO_TOTAL=1 makes the energy counter
 * "not supported" so that tally must integrate power; utilization 77%,
 * 1024 MiB used, 55 C.
 */
#include <stdlib.h>
#include <time.h>

static double watts(void)
{
    const char *w = getenv("FAKE_NVML_WATTS");
    return w ? strtod(w, NULL) : 250.0;
}

static double seconds(void)
{
    static double t0 = -1;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double t = (double)ts.tv_sec + ts.tv_nsec / 1e9;
    if (t0 < 0) t0 = t;
    return t - t0;
}

typedef struct { unsigned gpu, memory; } util_t;
typedef struct { unsigned long long total, free, used; } mem_t;

int nvmlInit_v2(void) { seconds(); return 0; }
int nvmlShutdown(void) { return 0; }
int nvmlDeviceGetCount_v2(unsigned *n) { *n = 1; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned i, void **h) { *h = (void *)(unsigned long)(i + 1); return 0; }
int nvmlDeviceGetTotalEnergyConsumption(void *h, unsigned long long *mj)
{
    (void)h;
    const char *no = getenv("FAKE_NVML_NO_TOTAL");
    if (no && *no == '1') return 3; /* NVML_ERROR_NOT_SUPPORTED */
    *mj = (unsigned long long)(seconds() * watts() * 1000.0);
    return 0;
}
int nvmlDeviceGetPowerUsage(void *h, unsigned *mw) { (void)h; *mw = (unsigned)(watts() * 1000.0); return 0; }
int nvmlDeviceGetUtilizationRates(void *h, util_t *u) { (void)h; u->gpu = 77; u->memory = 30; return 0; }
int nvmlDeviceGetMemoryInfo(void *h, mem_t *m)
{
    (void)h;
    m->total = 80ull << 30;
    m->used = 1024ull << 20;
    m->free = m->total - m->used;
    return 0;
}
int nvmlDeviceGetTemperature(void *h, int sensor, unsigned *t) { (void)h; (void)sensor; *t = 55; return 0; }
