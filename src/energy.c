/*
 * energy -- samplers and attribution (see energy.h for the rule).
 *
 * Why the in-flight count is tracked at begin and end, under one spinlock:
 * attribution needs, for every sampling interval, the request-seconds in
 * flight (L).  Requests still running when the interval closes count too,
 * and only begin/end calls can say which those are.  The lock is taken
 * twice per request (tens of nanoseconds when uncontended); the sampler
 * takes it once per interval.  Readings themselves happen outside it.
 */
#include "energy.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define HIST 16384   /* samples kept per device: 27 min at 100 ms */

enum { DEV_MANUAL, DEV_NVML, DEV_RAPL };

/* The NVML subset tally uses, declared here so that nothing is needed at
 * build time (types as NVML documents them). */
typedef void *nvml_dev;
typedef struct { unsigned gpu, memory; } nvml_util;
typedef struct { unsigned long long total, free, used; } nvml_mem;
typedef struct nvml_api {
    void *lib;
    int (*init)(void);
    int (*shutdown)(void);
    int (*count)(unsigned *);
    int (*handle)(unsigned, nvml_dev *);
    int (*total_energy)(nvml_dev, unsigned long long *); /* mJ */
    int (*power)(nvml_dev, unsigned *);                  /* mW */
    int (*util)(nvml_dev, nvml_util *);
    int (*mem)(nvml_dev, nvml_mem *);
    int (*temp)(nvml_dev, int, unsigned *);
} nvml_api;

typedef struct edev {
    char name[48];
    int kind;
    nvml_dev nvml;
    int has_total_energy;
    char path[512];           /* RAPL energy_uj */
    double max_range_uj;
    /* sampler-owned reading state */
    int have_prev;
    double prev_raw, counter_j, prev_power_w;
    int64_t prev_ns;
    double util, mem_mb, temp;
    /* attribution, under energy.lk */
    int n;
    double lacc_s;
    int started;
    int64_t last_tick_ns;
    double last_counter_j, R, total_j, idle_j;
    int64_t hist_t[HIST];
    double hist_R[HIST];
    size_t hhead, hcount;
} edev;

struct energy {
    struct tally *h;
    pthread_mutex_t mu;       /* the sampler's sleep and stop */
    pthread_spinlock_t lk;    /* attribution state: held for a few instructions */
    int64_t t_last_ns;        /* the last breakpoint of every device's load */
    _Atomic int64_t ready_ns;
    edev *dev[ENERGY_MAX_DEVICES];
    int ndev;
    nvml_api nv;
    pthread_t thread;
    int running, stop;
    pthread_cond_t cv;
    uint32_t interval_ms;
};

static int64_t now_ns(void) { return tally__mono_ns(); }

static edev *dev_new(energy *e, const char *name, int kind)
{
    if (e->ndev >= ENERGY_MAX_DEVICES) return NULL;
    edev *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    snprintf(d->name, sizeof d->name, "%s", name);
    d->kind = kind;
    d->util = d->mem_mb = d->temp = NAN;
    e->dev[e->ndev++] = d;
    return d;
}

static energy *energy_alloc(void)
{
    energy *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    pthread_mutex_init(&e->mu, NULL);
    pthread_spin_init(&e->lk, PTHREAD_PROCESS_PRIVATE);
    pthread_cond_init(&e->cv, NULL);
    e->t_last_ns = now_ns();
    return e;
}

energy *energy_new_manual(int ndevices)
{
    energy *e = energy_alloc();
    if (!e) return NULL;
    e->t_last_ns = 0;
    for (int i = 0; i < ndevices; i++) {
        char name[16];
        snprintf(name, sizeof name, "dev%d", i);
        dev_new(e, name, DEV_MANUAL);
    }
    return e;
}

static int matches(int device, int i) { return device <= 0 || device - 1 == i; }

/* Moves every device's load integral up to t (under lk). */
static int64_t advance(energy *e, int64_t t)
{
    if (t < e->t_last_ns) t = e->t_last_ns; /* a sample closed the interval first */
    double dt = (double)(t - e->t_last_ns) / 1e9;
    for (int i = 0; i < e->ndev; i++) e->dev[i]->lacc_s += e->dev[i]->n * dt;
    e->t_last_ns = t;
    return t;
}

int64_t energy_begin(energy *e, int device, int64_t t_ns)
{
    if (!e) return t_ns;
    pthread_spin_lock(&e->lk);
    t_ns = advance(e, t_ns);
    for (int i = 0; i < e->ndev; i++)
        if (matches(device, i)) e->dev[i]->n++;
    pthread_spin_unlock(&e->lk);
    return t_ns;
}

int64_t energy_end(energy *e, int device, int64_t t_ns)
{
    if (!e) return t_ns;
    pthread_spin_lock(&e->lk);
    t_ns = advance(e, t_ns);
    for (int i = 0; i < e->ndev; i++)
        if (matches(device, i) && e->dev[i]->n > 0) e->dev[i]->n--;
    pthread_spin_unlock(&e->lk);
    return t_ns;
}

/* One sample of one device (under lk). */
static void tick_locked(edev *d, int64_t t, double counter_j)
{
    if (!d->started) {
        d->started = 1;
        d->lacc_s = 0; /* load before the first reading has no energy to share */
    } else {
        double de = counter_j - d->last_counter_j;
        if (de < 0) de = 0;
        double L = d->lacc_s;
        double dt = (double)(t - d->last_tick_ns) / 1e9;
        d->lacc_s = 0;
        d->total_j += de;
        if (L > 0 && dt > 0) d->R += de / L * dt;
        else d->idle_j += de;
    }
    d->last_tick_ns = t;
    d->last_counter_j = counter_j;
    size_t slot = (d->hhead + d->hcount) % HIST;
    if (d->hcount == HIST) {
        d->hhead = (d->hhead + 1) % HIST;
        slot = (d->hhead + HIST - 1) % HIST;
    } else {
        d->hcount++;
    }
    d->hist_t[slot] = t;
    d->hist_R[slot] = d->R;
}

void energy_tick(energy *e, int device, int64_t t_ns, double counter_j)
{
    pthread_spin_lock(&e->lk);
    t_ns = advance(e, t_ns);
    tick_locked(e->dev[device], t_ns, counter_j);
    atomic_store(&e->ready_ns, t_ns);
    pthread_spin_unlock(&e->lk);
}

int64_t energy_ready_until(energy *e) { return e ? atomic_load(&e->ready_ns) : 0; }

/* R at time x, interpolated between samples; -1 when x is before the kept
 * history (after history wrapped).  Under lk. */
static int R_at(const edev *d, int64_t x, double *out)
{
    if (!d->hcount) {
        *out = 0;
        return 0;
    }
    size_t first = d->hhead, last = (d->hhead + d->hcount - 1) % HIST;
    if (x <= d->hist_t[first]) {
        if (d->hcount == HIST && x < d->hist_t[first]) return -1;
        *out = d->hist_R[first];
        return 0;
    }
    if (x >= d->hist_t[last]) {
        *out = d->hist_R[last];
        return 0;
    }
    size_t lo = 0, hi = d->hcount - 1; /* logical indices: t[lo] <= x < t[hi] */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (d->hist_t[(d->hhead + mid) % HIST] <= x) lo = mid;
        else hi = mid;
    }
    size_t a = (d->hhead + lo) % HIST, b = (d->hhead + hi) % HIST;
    double f = (double)(x - d->hist_t[a]) / (double)(d->hist_t[b] - d->hist_t[a]);
    *out = d->hist_R[a] + (d->hist_R[b] - d->hist_R[a]) * f;
    return 0;
}

double energy_of(energy *e, int device, int64_t b_ns, int64_t e_ns)
{
    if (!e) return -1;
    double sum = 0;
    int any = 0;
    pthread_spin_lock(&e->lk);
    for (int i = 0; i < e->ndev; i++) {
        if (!matches(device, i)) continue;
        double rb, re;
        if (R_at(e->dev[i], b_ns, &rb) || R_at(e->dev[i], e_ns, &re)) {
            any = -1;
            break;
        }
        sum += re - rb;
        any = 1;
    }
    pthread_spin_unlock(&e->lk);
    return any > 0 ? sum : -1;
}

double energy_util(energy *e, int device)
{
    if (!e) return NAN;
    double s = 0;
    int n = 0;
    pthread_spin_lock(&e->lk);
    for (int i = 0; i < e->ndev; i++)
        if (matches(device, i) && e->dev[i]->kind == DEV_NVML && !isnan(e->dev[i]->util)) {
            s += e->dev[i]->util;
            n++;
        }
    pthread_spin_unlock(&e->lk);
    return n ? s / n : NAN;
}

int energy_devices(energy *e, energy_device_total *out, int max)
{
    if (!e) return 0;
    pthread_spin_lock(&e->lk);
    int n = e->ndev < max ? e->ndev : max;
    for (int i = 0; i < n; i++) {
        snprintf(out[i].name, sizeof out[i].name, "%s", e->dev[i]->name);
        out[i].total_j = e->dev[i]->total_j;
        out[i].idle_j = e->dev[i]->idle_j;
        out[i].util_pct = e->dev[i]->util;
        out[i].mem_used_mb = e->dev[i]->mem_mb;
        out[i].temp_c = e->dev[i]->temp;
    }
    pthread_spin_unlock(&e->lk);
    return n;
}

/* ---- reading devices ---------------------------------------------------- */

static int read_u64_file(const char *path, double *out)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char text[64];
    int ok = fgets(text, sizeof text, f) != NULL;
    fclose(f);
    if (!ok) return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || errno) return -1;
    *out = (double)v;
    return 0;
}

/* The device's cumulative energy in joules, from its own counter. */
static int read_device(energy *e, edev *d, int64_t t, double *counter_j)
{
    if (d->kind == DEV_MANUAL) return -1; /* fed by energy_tick */
    if (d->kind == DEV_RAPL) {
        double raw;
        if (read_u64_file(d->path, &raw)) return -1;
        if (d->have_prev) {
            double delta = raw - d->prev_raw;
            if (delta < 0) delta += d->max_range_uj; /* the counter wrapped */
            d->counter_j += delta / 1e6;
        }
        d->prev_raw = raw;
        d->have_prev = 1;
    } else if (d->kind == DEV_NVML) {
        nvml_api *nv = &e->nv;
        if (d->has_total_energy) {
            unsigned long long mj;
            if (nv->total_energy(d->nvml, &mj) != 0) return -1;
            d->counter_j = (double)mj / 1e3;
        } else {
            unsigned mw;
            if (nv->power(d->nvml, &mw) != 0) return -1;
            double w = mw / 1e3;
            /* No energy counter: power integrated (trapezoid) over time. */
            if (d->have_prev) d->counter_j += (w + d->prev_power_w) / 2 * (double)(t - d->prev_ns) / 1e9;
            d->prev_power_w = w;
            d->have_prev = 1;
        }
        nvml_util u;
        nvml_mem m;
        unsigned temp;
        if (nv->util && nv->util(d->nvml, &u) == 0) d->util = u.gpu;
        if (nv->mem && nv->mem(d->nvml, &m) == 0) d->mem_mb = (double)m.used / (1024.0 * 1024.0);
        if (nv->temp && nv->temp(d->nvml, 0, &temp) == 0) d->temp = temp;
    }
    d->prev_ns = t;
    *counter_j = d->counter_j;
    return 0;
}

static void sample_all(energy *e, int64_t t)
{
    double c[ENERGY_MAX_DEVICES];
    int ok[ENERGY_MAX_DEVICES];
    for (int i = 0; i < e->ndev; i++) ok[i] = read_device(e, e->dev[i], t, &c[i]) == 0;
    pthread_spin_lock(&e->lk);
    t = advance(e, t);
    for (int i = 0; i < e->ndev; i++)
        if (ok[i]) tick_locked(e->dev[i], t, c[i]);
    atomic_store(&e->ready_ns, t);
    pthread_spin_unlock(&e->lk);
}

static void *sampler(void *arg)
{
    energy *e = arg;
    pthread_mutex_lock(&e->mu);
    while (!e->stop) {
        struct timespec dl = tally__deadline((int64_t)e->interval_ms * 1000000);
        pthread_cond_timedwait(&e->cv, &e->mu, &dl);
        if (e->stop) break;
        pthread_mutex_unlock(&e->mu);
        sample_all(e, now_ns());
        pthread_mutex_lock(&e->mu);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

static void find_nvml(energy *e)
{
    const char *lib = getenv("TALLY_NVML_LIB");
    nvml_api *nv = &e->nv;
    nv->lib = dlopen(lib && *lib ? lib : "libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!nv->lib) return;
    *(void **)&nv->init = dlsym(nv->lib, "nvmlInit_v2");
    *(void **)&nv->shutdown = dlsym(nv->lib, "nvmlShutdown");
    *(void **)&nv->count = dlsym(nv->lib, "nvmlDeviceGetCount_v2");
    *(void **)&nv->handle = dlsym(nv->lib, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&nv->total_energy = dlsym(nv->lib, "nvmlDeviceGetTotalEnergyConsumption");
    *(void **)&nv->power = dlsym(nv->lib, "nvmlDeviceGetPowerUsage");
    *(void **)&nv->util = dlsym(nv->lib, "nvmlDeviceGetUtilizationRates");
    *(void **)&nv->mem = dlsym(nv->lib, "nvmlDeviceGetMemoryInfo");
    *(void **)&nv->temp = dlsym(nv->lib, "nvmlDeviceGetTemperature");
    unsigned n = 0;
    if (!nv->init || !nv->count || !nv->handle || (!nv->total_energy && !nv->power) || nv->init() != 0 ||
        nv->count(&n) != 0) {
        dlclose(nv->lib);
        memset(nv, 0, sizeof *nv);
        return;
    }
    for (unsigned i = 0; i < n; i++) {
        nvml_dev h;
        if (nv->handle(i, &h) != 0) continue;
        unsigned long long mj;
        unsigned mw;
        int has_total = nv->total_energy && nv->total_energy(h, &mj) == 0;
        if (!has_total && !(nv->power && nv->power(h, &mw) == 0)) continue;
        char name[16];
        snprintf(name, sizeof name, "gpu%u", i);
        edev *d = dev_new(e, name, DEV_NVML);
        if (!d) break;
        d->nvml = h;
        d->has_total_energy = has_total;
    }
}

static void find_rapl(energy *e)
{
    const char *root = getenv("TALLY_POWERCAP_ROOT");
    if (!root || !*root) root = "/sys/class/powercap";
    DIR *dir = opendir(root);
    if (!dir) return;
    struct dirent *de;
    char names[ENERGY_MAX_DEVICES][64];
    int n = 0;
    while ((de = readdir(dir)) && n < ENERGY_MAX_DEVICES)
        if (!strncmp(de->d_name, "intel-rapl:", 11) || !strncmp(de->d_name, "amd-rapl:", 9))
            snprintf(names[n++], 64, "%.63s", de->d_name);
    closedir(dir);
    qsort(names, (size_t)n, sizeof names[0], (int (*)(const void *, const void *))strcmp);
    for (int i = 0; i < n; i++) {
        char p[1200], zone[64] = "";
        snprintf(p, sizeof p, "%.400s/%.63s/name", root, names[i]);
        FILE *f = fopen(p, "r");
        if (!f) continue;
        if (!fgets(zone, sizeof zone, f)) zone[0] = 0;
        fclose(f);
        zone[strcspn(zone, "\n")] = 0;
        /* Packages and DRAM; core/uncore are parts of a package already. */
        if (strncmp(zone, "package", 7) != 0 && strcmp(zone, "dram") != 0 && strcmp(zone, "psys") != 0) continue;
        edev tmp;
        memset(&tmp, 0, sizeof tmp);
        snprintf(tmp.path, sizeof tmp.path, "%.400s/%.63s/energy_uj", root, names[i]);
        snprintf(p, sizeof p, "%.400s/%.63s/max_energy_range_uj", root, names[i]);
        double probe;
        if (read_u64_file(tmp.path, &probe) || read_u64_file(p, &tmp.max_range_uj)) {
            tally__log(e->h, TALLY_LOG_WARN, "energy: %s is not readable; left out", tmp.path);
            continue;
        }
        char name[48];
        const char *colon = strchr(names[i], ':');
        if (!strcmp(zone, "dram")) snprintf(name, sizeof name, "cpu:dram:%.30s", colon ? colon + 1 : names[i]);
        else snprintf(name, sizeof name, "cpu:%.40s", zone);
        edev *d = dev_new(e, name, DEV_RAPL);
        if (!d) break;
        memcpy(d->path, tmp.path, sizeof d->path);
        d->max_range_uj = tmp.max_range_uj;
    }
}

energy *energy_start(struct tally *h, uint32_t interval_ms)
{
    energy *e = energy_alloc();
    if (!e) return NULL;
    e->h = h;
    e->interval_ms = interval_ms ? interval_ms : 100;
    find_nvml(e);
    find_rapl(e);
    if (!e->ndev) {
        tally__log(h, TALLY_LOG_WARN,
                   "energy: no NVML GPU and no readable powercap zone: energy fields are left out");
        energy_free(e);
        return NULL;
    }
    sample_all(e, now_ns()); /* the baseline */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    e->running = pthread_create(&e->thread, NULL, sampler, e) == 0;
    if (e->running) pthread_setname_np(e->thread, "tally-energy");
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return e;
}

void energy_stop(energy *e, int64_t t_ns)
{
    if (!e) return;
    if (e->running) {
        pthread_mutex_lock(&e->mu);
        e->stop = 1;
        pthread_cond_signal(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
        e->running = 0;
    }
    if (e->nv.lib || e->ndev) sample_all(e, t_ns);
}

void energy_free(energy *e)
{
    if (!e) return;
    for (int i = 0; i < e->ndev; i++) free(e->dev[i]);
    if (e->nv.lib) {
        if (e->nv.shutdown) e->nv.shutdown();
        dlclose(e->nv.lib);
    }
    pthread_mutex_destroy(&e->mu);
    pthread_spin_destroy(&e->lk);
    pthread_cond_destroy(&e->cv);
    free(e);
}
