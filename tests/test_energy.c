/*
 * test_energy -- attribution conserves energy with overlapping requests
 * (by hand, then end to end on a fake NVML library), powercap counter
 * wrap, power integration where a GPU has no energy counter, NVML missing
 * and powercap unreadable.
 */
#include <math.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include "energy.h"
#include "helpers.h"
#include "internal.h"

#define S 1000000000LL

static void near(double a, double b, double tol, int line)
{
    if (fabs(a - b) > tol) fail_msg("line %d: %.9f != %.9f", line, a, b);
}
#define NEAR(a, b, tol) near((a), (b), (tol), __LINE__)

/* One device; samples each second, the counter rising 10 J a second.
 *   A in flight 0.5 s .. 2.5 s, B 1.0 s .. 1.5 s.
 *   [0,1]: only A -> A 10 J.  [1,2]: A 1 s, B 0.5 s -> A 6.667, B 3.333.
 *   [2,3]: only A -> A 10 J.  [3,4]: nothing -> 10 J idle. */
static void test_attribution_by_hand(void **state)
{
    (void)state;
    energy *e = energy_new_manual(1);
    energy_tick(e, 0, 0, 0);
    int64_t a0 = energy_begin(e, 0, S / 2);
    energy_tick(e, 0, 1 * S, 10);
    int64_t b0 = energy_begin(e, 1, 1 * S);
    int64_t b1 = energy_end(e, 1, 3 * S / 2);
    energy_tick(e, 0, 2 * S, 20);
    int64_t a1 = energy_end(e, 0, 5 * S / 2);
    energy_tick(e, 0, 3 * S, 30);
    energy_tick(e, 0, 4 * S, 40);
    double ea = energy_of(e, 0, a0, a1), eb = energy_of(e, 1, b0, b1);
    NEAR(ea, 20 + 20.0 / 3, 1e-9);
    NEAR(eb, 10.0 / 3, 1e-9);
    energy_device_total d;
    assert_int_equal(energy_devices(e, &d, 1), 1);
    NEAR(d.total_j, 40, 1e-9);
    NEAR(d.idle_j, 10, 1e-9);
    NEAR(ea + eb + d.idle_j, d.total_j, 1e-9); /* conservation */
    energy_free(e);
}

/* Many overlapping requests on two devices with uneven power: whatever the
 * overlap, attributed + idle == the counters' change. */
static void test_conservation_random(void **state)
{
    (void)state;
    energy *e = energy_new_manual(2);
    enum { N = 500 };
    int64_t b[N], en[N];
    int dev[N];
    int64_t t = 0;
    double c0 = 0, c1 = 0;
    energy_tick(e, 0, 0, 0);
    energy_tick(e, 1, 0, 0);
    unsigned seed = 1;
    int open_[N], nopen = 0, started = 0, ended = 0;
    for (int step = 0; step < 4000 && ended < N; step++) {
        t += 1000000 + (seed = seed * 1103515245u + 12345u) % 5000000;
        int action = (seed >> 16) % 4;
        if (action == 0 && started < N) {
            dev[started] = (int)((seed >> 8) % 3); /* 0 = both, 1, 2 */
            b[started] = energy_begin(e, dev[started], t);
            open_[nopen++] = started++;
        } else if (action == 1 && nopen) {
            int k = (int)((seed >> 4) % (unsigned)nopen);
            int r = open_[k];
            open_[k] = open_[--nopen];
            en[r] = energy_end(e, dev[r], t);
            ended++;
        } else if (action == 2) {
            c0 += (seed % 1000) / 10.0;
            c1 += (seed % 300) / 10.0;
            energy_tick(e, 0, t, c0);
            energy_tick(e, 1, t, c1);
        }
        if (started == N && !nopen) break;
    }
    while (nopen) {
        int r = open_[--nopen];
        t += 1000000;
        en[r] = energy_end(e, dev[r], t);
    }
    t += 1000000;
    c0 += 5;
    c1 += 7;
    energy_tick(e, 0, t, c0);
    energy_tick(e, 1, t, c1);
    double sum = 0;
    for (int i = 0; i < started; i++) {
        double j = energy_of(e, dev[i], b[i], en[i]);
        assert_true(j >= 0);
        sum += j;
    }
    energy_device_total d[2];
    energy_devices(e, d, 2);
    NEAR(d[0].total_j, c0, 1e-6);
    NEAR(d[1].total_j, c1, 1e-6);
    NEAR(sum + d[0].idle_j + d[1].idle_j, c0 + c1, 1e-6 * (c0 + c1));
    energy_free(e);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) fail_msg("cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

typedef struct logs {
    int n;
    char all[2048];
} logs;

static void on_log(void *ud, int level, const char *msg)
{
    (void)level;
    logs *l = ud;
    l->n++;
    size_t k = strlen(l->all);
    snprintf(l->all + k, sizeof l->all - k, "%s\n", msg);
}

static void test_powercap_wrap(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("powercap");
    char root[600], zone[700], p[800];
    snprintf(root, sizeof root, "%s", dir);
    snprintf(zone, sizeof zone, "%s/intel-rapl:0", root);
    mkdir(zone, 0755);
    snprintf(p, sizeof p, "%s/name", zone);
    write_file(p, "package-0\n");
    snprintf(p, sizeof p, "%s/max_energy_range_uj", zone);
    write_file(p, "1000000\n");
    snprintf(p, sizeof p, "%s/energy_uj", zone);
    write_file(p, "900000\n");
    /* core is part of the package: not a device of its own */
    snprintf(zone, sizeof zone, "%s/intel-rapl:0:0", root);
    mkdir(zone, 0755);
    snprintf(p, sizeof p, "%s/intel-rapl:0:0/name", root);
    write_file(p, "core\n");
    setenv("TALLY_POWERCAP_ROOT", root, 1);
    setenv("TALLY_NVML_LIB", "/nonexistent/libnvidia-ml.so.1", 1);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.memory_sink = 1;
    tally_t *h = tally_open(&cfg); /* a handle for the log callback only */
    energy *e = energy_start(h, 60000);
    assert_non_null(e);
    snprintf(p, sizeof p, "%s/intel-rapl:0/energy_uj", root);
    write_file(p, "100000\n"); /* wrapped: 100000 + (1000000 - 900000) uJ */
    energy_stop(e, tally__mono_ns());
    energy_device_total d[4];
    assert_int_equal(energy_devices(e, d, 4), 1);
    assert_string_equal(d[0].name, "cpu:package-0");
    NEAR(d[0].total_j, 0.2, 1e-9);
    energy_free(e);
    tally_close(h, NULL);
    th_rmrf(dir);
}

static void test_nothing_to_read(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("nopower");
    char zone[700], p[800];
    snprintf(zone, sizeof zone, "%s/intel-rapl:0", dir);
    mkdir(zone, 0755);
    snprintf(p, sizeof p, "%s/name", zone);
    write_file(p, "package-0\n");
    snprintf(p, sizeof p, "%s/energy_uj", zone);
    write_file(p, "not a number\n"); /* unreadable */
    setenv("TALLY_POWERCAP_ROOT", dir, 1);
    setenv("TALLY_NVML_LIB", "/nonexistent/libnvidia-ml.so.1", 1);
    logs lg = {0};
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.memory_sink = 1;
    cfg.energy = 1;
    cfg.log = on_log;
    cfg.log_ud = &lg;
    tally_t *h = tally_open(&cfg);
    int64_t tok = tally_request_begin(h, 0);
    tally_request q = {0};
    q.model = "m";
    q.begin_token = tok;
    tally_request_record(h, &q);
    tally_flush(h, 5000);
    th_lines l;
    th_memory_lines(h, &l);
    assert_null(strstr(l.line[1], "energy_j"));
    assert_non_null(strstr(lg.all, "not readable"));
    assert_non_null(strstr(lg.all, "no NVML GPU and no readable powercap zone"));
    assert_int_equal(lg.n, 2);
    th_lines_free(&l);
    tally_close(h, NULL);
    th_rmrf(dir);
}

static void fake_nvml(void)
{
    const char *lib = getenv("FAKE_NVML_LIB");
    if (!lib) fail_msg("FAKE_NVML_LIB is not set (run through ctest)");
    setenv("TALLY_NVML_LIB", lib, 1);
    setenv("TALLY_POWERCAP_ROOT", "/nonexistent", 1);
}

static void test_nvml_power_integration(void **state)
{
    (void)state;
    fake_nvml();
    setenv("FAKE_NVML_NO_TOTAL", "1", 1);
    setenv("FAKE_NVML_WATTS", "100", 1);
    energy *e = energy_start(NULL, 10);
    assert_non_null(e);
    int64_t t0 = tally__mono_ns();
    usleep(300000);
    int64_t t1 = tally__mono_ns();
    energy_stop(e, t1);
    energy_device_total d;
    assert_int_equal(energy_devices(e, &d, 1), 1);
    assert_string_equal(d.name, "gpu0");
    double want = 100.0 * (double)(t1 - t0) / 1e9;
    assert_true(fabs(d.total_j - want) / want < 0.1);
    NEAR(d.util_pct, 77, 0);
    NEAR(d.temp_c, 55, 0);
    NEAR(d.mem_used_mb, 1024, 1e-9);
    energy_free(e);
    unsetenv("FAKE_NVML_NO_TOTAL");
    unsetenv("FAKE_NVML_WATTS");
}

typedef struct worker {
    tally_t *h;
    int id;
} worker;

static void *serve(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < 40; i++) {
        int64_t tok = tally_request_begin(w->h, 0);
        usleep(1000 + (unsigned)((w->id * 7 + i * 13) % 9) * 1000);
        tally_request q = {0};
        q.model = "m";
        q.completion_tokens = 10;
        q.begin_token = tok;
        tally_request_record(w->h, &q);
        if (i % 5 == 0) usleep(3000); /* idle gaps */
    }
    return NULL;
}

/* End to end: three threads of overlapping requests while a fake GPU draws
 * 250 W; the requests' energy plus run_end's idle energy is the counter's
 * change, and each request carries the GPU's utilization. */
static void test_end_to_end_conservation(void **state)
{
    (void)state;
    fake_nvml();
    const char *dir = th_tmpdir("energy");
    char path[600];
    snprintf(path, sizeof path, "%s/e.jsonl", dir);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    cfg.energy = 1;
    cfg.energy_interval_ms = 5;
    tally_t *h = tally_open(&cfg);
    pthread_t th[3];
    worker w[3];
    for (int i = 0; i < 3; i++) {
        w[i] = (worker){h, i};
        pthread_create(&th[i], NULL, serve, &w[i]);
    }
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    usleep(20000); /* idle at the end */
    tally_close(h, NULL);

    th_lines l;
    th_read_lines(path, &l);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    double sum = 0;
    int reqs = 0;
    for (size_t i = 0; i < l.n; i++) {
        json_arena_reset(&a);
        const jv *v = th_parse(&a, l.line[i]);
        const jv *ej = th_get(v, "extra.energy_j");
        if (ej) {
            assert_true(jv_num(ej, 0) > 0);
            sum += jv_num(ej, 0);
            reqs++;
            NEAR(jv_num(th_get(v, "extra.gpu_util_pct"), 0), 77, 0);
        }
    }
    assert_int_equal(reqs, 120);
    json_arena_reset(&a);
    const jv *end = th_parse(&a, l.line[l.n - 1]);
    double total = jv_num(th_get(end, "energy_j.gpu0"), -1), idle = jv_num(th_get(end, "energy_idle_j.gpu0"), -1);
    assert_true(total > 0 && idle > 0);
    NEAR(sum + idle, total, 1e-6 * total);
    json_arena_free(&a);
    th_lines_free(&l);
    th_rmrf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attribution_by_hand),    cmocka_unit_test(test_conservation_random),
        cmocka_unit_test(test_powercap_wrap),          cmocka_unit_test(test_nothing_to_read),
        cmocka_unit_test(test_nvml_power_integration), cmocka_unit_test(test_end_to_end_conservation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
