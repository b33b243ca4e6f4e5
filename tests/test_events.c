/*
 * test_events -- every event kind written, read back with the strict
 * reader, and checked field by field against DESIGN.md's wire format.
 */
#include <math.h>
#include <unistd.h>

#include "helpers.h"

static tally_t *open_mem(tally_config *cfg)
{
    tally_config c;
    if (!cfg) {
        tally_config_init(&c);
        cfg = &c;
    }
    cfg->memory_sink = 1;
    if (!cfg->run_id) cfg->run_id = "test-run-1";
    return tally_open(cfg);
}

/* Closes h after copying the memory sink's lines (the close writes run_end
 * too, which the memory sink sees but we can no longer read), so tests that
 * need run_end use a file. */
static void lines_of(tally_t *h, th_lines *l)
{
    assert_int_equal(tally_flush(h, 5000), 0);
    th_memory_lines(h, l);
}

static void check_head(const jv *v, const char *kind)
{
    TH_STR(v, "kind", kind);
    const jv *t = jv_get(v, "t"), *ts = jv_get(v, "ts");
    assert_non_null(t);
    assert_non_null(ts);
    assert_true(jv_num(t, 0) >= 0);
    assert_true(jv_num(ts, 0) > 1.7e9);
}

static void test_run_start(void **state)
{
    (void)state;
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.run_id = "serve-20261123-001";
    cfg.host = "node-7";
    cfg.backend = "cuda";
    cfg.backend_device = "H100";
    cfg.model = "llama";
    cfg.model_path = "/models/llama";
    cfg.config_json = "{ \"tp\" : 2,\n \"dtype\": \"bf16\" }";
    cfg.git_sha = "abc123";
    cfg.git_branch = "main";
    cfg.git_dirty = 1;
    tally_t *h = open_mem(&cfg);
    tally_run_start(h);
    th_lines l;
    lines_of(h, &l);
    assert_int_equal(l.n, 1);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const jv *v = th_parse(&a, l.line[0]);
    check_head(v, "run_start");
    assert_true(jv_num(jv_get(v, "t"), -1) == 0);
    TH_STR(v, "schema", "toy/v1");
    TH_STR(v, "run_id", "serve-20261123-001");
    const char *started = jv_str(jv_get(v, "started_at"));
    assert_non_null(started);
    assert_int_equal(strlen(started), 20);
    assert_int_equal(started[19], 'Z');
    assert_int_equal(started[10], 'T');
    TH_STR(v, "host.name", "node-7");
    TH_STR(v, "host.os", "linux");
    assert_non_null(jv_str(th_get(v, "host.arch")));
    TH_STR(v, "backend.kind", "cuda");
    TH_STR(v, "backend.device", "H100");
    TH_STR(v, "model.name", "llama");
    TH_STR(v, "model.path", "/models/llama");
    TH_INT(v, "config.tp", 2);
    TH_STR(v, "config.dtype", "bf16");
    TH_STR(v, "phase", "serve");
    TH_STR(v, "git.sha", "abc123");
    TH_STR(v, "git.branch", "main");
    TH_TRUE(v, "git.dirty");
    TH_INT(v, "pid", getpid());
    /* The caller's config had a newline between tokens: the line has none. */
    assert_null(strchr(l.line[0], '\n'));
    th_lines_free(&l);
    json_arena_free(&a);
    tally_close(h, NULL);
}

static void test_request_full(void **state)
{
    (void)state;
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.capture_text = 1;
    tally_t *h = open_mem(&cfg);
    tally_stage st[2] = {{"router", 12}, {"final", 2100}};
    tally_request q = {0};
    q.model = "gpt-4o";
    q.prompt_tokens = 1200;
    q.completion_tokens = 300;
    q.latency_us = 2500000;
    q.engine = "openai";
    q.route = "web_then_grok";
    q.request_id = "r-1";
    q.principal_id = "user-9";
    q.provider_request_id = "chatcmpl-1";
    q.prompt_version = "v3";
    q.cached_tokens = 1000;
    q.cache_write_tokens = 100;
    q.reasoning_tokens = 50;
    q.ttft_us = 350000;
    q.stages = st;
    q.n_stages = 2;
    q.cost_nusd = 5000;
    q.cost_input_nusd = 1000;
    q.cost_cached_nusd = 500;
    q.cost_cache_write_nusd = 500;
    q.cost_output_nusd = 2500;
    q.cost_reasoning_nusd = 500;
    q.energy_j = 12.5;
    q.gpu_util_pct = 87.25;
    q.degraded = "web_failed";
    q.flags = TALLY_HAS_COST | TALLY_HAS_ENERGY | TALLY_HAS_GPU_UTIL | TALLY_ESCALATED | TALLY_FALLBACK |
              TALLY_CACHE_HIT | TALLY_CEILING_HIT | TALLY_USER_CAP_HIT;
    q.sampling_json = "{\"temperature\":0.2}";
    q.text = "what is 2+2?";
    q.extra_json = "{\"room\":\"!abc\",\"n\":[1,2]}";
    tally_request_record(h, &q);
    th_lines l;
    lines_of(h, &l);
    assert_int_equal(l.n, 2); /* run_start + request */
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const jv *v = th_parse(&a, l.line[1]);
    check_head(v, "eval");
    TH_STR(v, "phase", "serve");
    TH_STR(v, "name", "request");
    TH_STR(v, "extra.model", "gpt-4o");
    TH_INT(v, "extra.prompt_tokens", 1200);
    TH_INT(v, "extra.completion_tokens", 300);
    TH_INT(v, "extra.latency_us", 2500000);
    TH_STR(v, "extra.engine", "openai");
    TH_STR(v, "extra.route", "web_then_grok");
    TH_STR(v, "extra.request_id", "r-1");
    TH_STR(v, "extra.principal_id", "user-9");
    TH_STR(v, "extra.provider_request_id", "chatcmpl-1");
    TH_STR(v, "extra.prompt_version", "v3");
    TH_INT(v, "extra.cached_tokens", 1000);
    TH_INT(v, "extra.cache_write_tokens", 100);
    TH_INT(v, "extra.reasoning_tokens", 50);
    TH_INT(v, "extra.ttft_us", 350000);
    TH_INT(v, "extra.stage_us.router", 12);
    TH_INT(v, "extra.stage_us.final", 2100);
    TH_INT(v, "extra.cost_nusd", 5000);
    TH_INT(v, "extra.cost_breakdown_nusd.input", 1000);
    TH_INT(v, "extra.cost_breakdown_nusd.cached", 500);
    TH_INT(v, "extra.cost_breakdown_nusd.cache_write", 500);
    TH_INT(v, "extra.cost_breakdown_nusd.output", 2500);
    TH_INT(v, "extra.cost_breakdown_nusd.reasoning", 500);
    assert_true(jv_num(th_get(v, "extra.energy_j"), 0) == 12.5);
    assert_true(jv_num(th_get(v, "extra.gpu_util_pct"), 0) == 87.25);
    TH_TRUE(v, "extra.ok");
    TH_ABSENT(v, "extra.error");
    TH_STR(v, "extra.degraded", "web_failed");
    TH_TRUE(v, "extra.escalated");
    TH_TRUE(v, "extra.fallback");
    TH_TRUE(v, "extra.cache_hit");
    TH_TRUE(v, "extra.ceiling_hit");
    TH_TRUE(v, "extra.user_cap_hit");
    assert_true(jv_num(th_get(v, "extra.sampling.temperature"), 0) == 0.2);
    TH_STR(v, "extra.text", "what is 2+2?");
    TH_STR(v, "extra.room", "!abc");
    assert_int_equal(th_get(v, "extra.n")->count, 2);
    th_lines_free(&l);
    json_arena_free(&a);
    tally_close(h, NULL);
}

static void test_request_minimal(void **state)
{
    (void)state;
    tally_t *h = open_mem(NULL); /* capture_text off */
    tally_request q = {0};
    q.model = "m";
    q.prompt_tokens = 10;
    q.completion_tokens = 0;
    q.latency_us = 5;
    q.error = "boom";
    q.text = "secret prompt";
    tally_request_record(h, &q);
    th_lines l;
    lines_of(h, &l);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const jv *v = th_parse(&a, l.line[1]);
    TH_FALSE(v, "extra.ok");
    TH_STR(v, "extra.error", "boom");
    /* Absent, never faked or zero-filled. */
    const char *absent[] = {"extra.ttft_us", "extra.cost_nusd", "extra.energy_j", "extra.gpu_util_pct",
                            "extra.cached_tokens", "extra.reasoning_tokens", "extra.engine", "extra.escalated",
                            "extra.fallback", "extra.stage_us", "extra.sampling", "extra.degraded"};
    for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++) assert_null(th_get(v, absent[i]));
    /* Private text stays out by default: not even the key. */
    TH_ABSENT(v, "extra.text");
    assert_null(strstr(l.line[1], "secret"));
    th_lines_free(&l);
    json_arena_free(&a);
    tally_close(h, NULL);
}

static void test_training_kinds(void **state)
{
    (void)state;
    tally_t *h = open_mem(NULL);
    tally_epoch_begin(h, 0);
    tally_step_begin(h, 7);
    usleep(2000);
    tally_step_info info;
    tally_step_info_init(&info);
    info.loss = 2.5;
    info.lr = 0.001;
    info.grad_norm = 0.75;
    info.tokens = 4096;
    info.metrics_json = "{\"acc\":0.5}";
    tally_step_end(h, 7, &info);
    tally_eval(h, "val", 2.25, 9.5, 128, "{\"split\":\"dev\"}");
    tally_epoch_end(h, 0, "{\"train_loss\":2.5}");
    tally_error_at(h, "ValueError", "bad batch", "train", 7, NULL);
    tally_error(h, "OSError", "disk");
    tally_note(h, "checkpoint saved");
    th_lines l;
    lines_of(h, &l);
    assert_int_equal(l.n, 7);
    json_arena a;
    json_arena_init(&a, 1 << 20);

    const jv *v = th_parse(&a, l.line[1]);
    check_head(v, "step");
    TH_STR(v, "phase", "train");
    TH_INT(v, "step", 7);
    assert_true(jv_num(jv_get(v, "loss"), 0) == 2.5);
    assert_true(jv_num(jv_get(v, "lr"), 0) == 0.001);
    assert_true(jv_num(jv_get(v, "grad_norm"), 0) == 0.75);
    TH_INT(v, "tokens", 4096);
    assert_true(jv_int(jv_get(v, "wall_us"), 0) >= 2000);
    assert_true(jv_num(th_get(v, "metrics.acc"), 0) == 0.5);
    TH_ABSENT(v, "unfinished");

    json_arena_reset(&a);
    v = th_parse(&a, l.line[2]);
    check_head(v, "eval");
    TH_STR(v, "phase", "eval");
    TH_STR(v, "name", "val");
    assert_true(jv_num(jv_get(v, "loss"), 0) == 2.25);
    assert_true(jv_num(jv_get(v, "ppl"), 0) == 9.5);
    TH_INT(v, "samples", 128);
    TH_STR(v, "extra.split", "dev");

    json_arena_reset(&a);
    v = th_parse(&a, l.line[3]);
    check_head(v, "epoch");
    TH_INT(v, "epoch", 0);
    assert_true(jv_int(jv_get(v, "wall_us"), 0) >= 2000);
    assert_true(jv_num(th_get(v, "metrics.train_loss"), 0) == 2.5);

    json_arena_reset(&a);
    v = th_parse(&a, l.line[4]);
    check_head(v, "error");
    TH_STR(v, "type", "ValueError");
    TH_STR(v, "message", "bad batch");
    TH_STR(v, "phase", "train");
    TH_INT(v, "step", 7);
    TH_ABSENT(v, "request_id");

    json_arena_reset(&a);
    v = th_parse(&a, l.line[5]);
    TH_STR(v, "type", "OSError");
    TH_ABSENT(v, "step");
    TH_ABSENT(v, "phase");

    json_arena_reset(&a);
    v = th_parse(&a, l.line[6]);
    check_head(v, "note");
    TH_STR(v, "text", "checkpoint saved");

    /* t never decreases within one writer. */
    double last = -1;
    for (size_t i = 0; i < l.n; i++) {
        json_arena_reset(&a);
        double t = jv_num(jv_get(th_parse(&a, l.line[i]), "t"), -1);
        assert_true(t >= last);
        last = t;
    }
    tally_counters c;
    tally_get_counters(h, &c);
    assert_int_equal(c.errors, 2);
    th_lines_free(&l);
    json_arena_free(&a);
    tally_close(h, NULL);
}

static void test_generic_event(void **state)
{
    (void)state;
    tally_t *h = open_mem(NULL);
    tally_field f[] = {
        {"count", TALLY_FIELD_INT, 42, 0, NULL},
        {"ratio", TALLY_FIELD_DOUBLE, 0, 0.125, NULL},
        {"nan", TALLY_FIELD_DOUBLE, 0, NAN, NULL},
        {"inf", TALLY_FIELD_DOUBLE, 0, INFINITY, NULL},
        {"who", TALLY_FIELD_STRING, 0, 0, "me"},
        {"flag", TALLY_FIELD_BOOL, 1, 0, NULL},
        {"obj", TALLY_FIELD_JSON, 0, 0, "[1,{\"a\":null}]"},
        {"bad", TALLY_FIELD_JSON, 0, 0, "{nope"},
        {"t", TALLY_FIELD_INT, 5, 0, NULL},
    };
    tally_event(h, "checkpoint", f, sizeof f / sizeof f[0]);
    th_lines l;
    lines_of(h, &l);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const jv *v = th_parse(&a, l.line[1]);
    check_head(v, "checkpoint");
    TH_INT(v, "count", 42);
    assert_true(jv_num(jv_get(v, "ratio"), 0) == 0.125);
    assert_int_equal(jv_get(v, "nan")->type, JV_NULL);
    assert_int_equal(jv_get(v, "inf")->type, JV_NULL);
    TH_STR(v, "who", "me");
    TH_TRUE(v, "flag");
    assert_int_equal(jv_get(v, "obj")->type, JV_ARR);
    TH_STR(v, "bad.unparsed", "{nope");
    TH_INT(v, "field_t", 5);
    th_lines_free(&l);
    json_arena_free(&a);
    tally_close(h, NULL);
}

static void test_run_end(void **state)
{
    (void)state;
    const char *dir = th_tmpdir("runend");
    char path[600];
    snprintf(path, sizeof path, "%s/e.jsonl", dir);
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.path = path;
    cfg.phase = "train";
    tally_t *h = tally_open(&cfg);
    tally_request q = {0};
    q.model = "m";
    q.completion_tokens = 11;
    tally_request_record(h, &q);
    tally_request_record(h, &q);
    tally_error(h, "E", "x");
    tally_step_info info;
    tally_step_info_init(&info);
    info.loss = 0.5;
    tally_step_end(h, 3, &info);
    tally_step_begin(h, 4); /* never ended: written at close, unfinished */
    tally_close_with_code(h, "interrupted", 130);
    th_lines l;
    assert_int_equal(th_read_lines(path, &l), 0);
    assert_int_equal(l.n, 7);
    assert_false(l.torn_last);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const jv *v = th_parse(&a, l.line[5]);
    TH_STR(v, "kind", "step");
    TH_INT(v, "step", 4);
    TH_TRUE(v, "unfinished");
    json_arena_reset(&a);
    v = th_parse(&a, l.line[6]);
    check_head(v, "run_end");
    const char *ended = jv_str(jv_get(v, "ended_at"));
    assert_non_null(ended);
    assert_int_equal(ended[19], 'Z');
    TH_STR(v, "reason", "interrupted");
    TH_INT(v, "stats.requests", 2);
    TH_INT(v, "stats.errors", 1);
    TH_INT(v, "stats.tokens_out", 22);
    TH_INT(v, "stats.events", 7);
    TH_INT(v, "stats.dropped", 0);
    TH_INT(v, "final_step", 3); /* the unfinished step has no loss */
    assert_true(jv_num(jv_get(v, "final_loss"), 0) == 0.5);
    TH_INT(v, "exit_code", 130);
    json_arena_reset(&a);
    v = th_parse(&a, l.line[0]);
    TH_STR(v, "phase", "train");
    assert_true(strncmp(jv_str(jv_get(v, "run_id")), "train-", 6) == 0);
    th_lines_free(&l);
    json_arena_free(&a);
    th_rmrf(dir);
}

static void test_bad_caller_input(void **state)
{
    (void)state;
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.max_string = 16;
    cfg.config_json = "not json";
    tally_t *h = open_mem(&cfg);
    tally_request q = {0};
    q.model = "a-model-name-that-is-far-too-long";
    q.extra_json = "{\"a\":1,}";          /* trailing comma: invalid */
    q.sampling_json = "[1,2]";            /* valid JSON, but not an object */
    tally_request_record(h, &q);
    /* A cut must not split a UTF-8 sequence: 15 ASCII bytes then a 2-byte char. */
    tally_note(h, "aaaaaaaaaaaaaaa\xc3\xa9zzz");
    th_lines l;
    lines_of(h, &l);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const jv *v = th_parse(&a, l.line[0]);
    TH_STR(v, "config_unparsed", "not json");
    json_arena_reset(&a);
    v = th_parse(&a, l.line[1]);
    TH_STR(v, "extra.model", "a-model-name-tha");
    const jv *tr = th_get(v, "extra.truncated");
    assert_non_null(tr);
    assert_int_equal(tr->type, JV_ARR);
    assert_string_equal(jv_str(tr->child), "model");
    TH_STR(v, "extra.extra_unparsed", "{\"a\":1,}");
    TH_STR(v, "extra.sampling_unparsed", "[1,2]");
    TH_ABSENT(v, "extra.a");
    json_arena_reset(&a);
    v = th_parse(&a, l.line[2]);
    TH_STR(v, "text", "aaaaaaaaaaaaaaa");
    th_lines_free(&l);
    json_arena_free(&a);
    tally_close(h, NULL);
}

static void test_null_safety(void **state)
{
    (void)state;
    /* Every call accepts NULL and does nothing. */
    tally_run_start(NULL);
    tally_request_record(NULL, NULL);
    tally_step_begin(NULL, 1);
    tally_step_end(NULL, 1, NULL);
    tally_epoch_begin(NULL, 1);
    tally_epoch_end(NULL, 1, NULL);
    tally_eval(NULL, NULL, 0, 0, 0, NULL);
    tally_error(NULL, NULL, NULL);
    tally_note(NULL, NULL);
    tally_event(NULL, NULL, NULL, 3);
    assert_int_equal(tally_flush(NULL, 1), 0);
    assert_int_equal(tally_enabled(NULL), 0);
    assert_string_equal(tally_run_id(NULL), "");
    assert_int_equal(tally_memory_count(NULL), 0);
    tally_counters c;
    c.written = 99;
    tally_get_counters(NULL, &c);
    assert_int_equal(c.written, 0);
    tally_close(NULL, NULL);
    /* And NULL fields in a live handle. */
    tally_t *h = open_mem(NULL);
    tally_request q = {0};
    tally_request_record(h, &q);          /* no model */
    tally_request_record(h, NULL);
    tally_error(h, NULL, NULL);
    tally_note(h, NULL);
    tally_event(h, NULL, NULL, 0);
    tally_eval(h, NULL, NAN, NAN, -1, NULL);
    th_lines l;
    lines_of(h, &l);
    assert_int_equal(l.n, 6); /* run_start + 5 */
    json_arena a;
    json_arena_init(&a, 1 << 20);
    for (size_t i = 0; i < l.n; i++) {
        json_arena_reset(&a);
        th_parse(&a, l.line[i]);
    }
    json_arena_reset(&a);
    const jv *v = th_parse(&a, l.line[5]);
    TH_ABSENT(v, "loss");
    TH_ABSENT(v, "samples");
    th_lines_free(&l);
    json_arena_free(&a);
    tally_close(h, NULL);
}

static void on_event(void *ud, const char *line, size_t len)
{
    (void)line;
    size_t *n = ud;
    if (len > 0) (*n)++;
}

static void test_subscriber(void **state)
{
    (void)state;
    size_t seen = 0;
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.subscriber = on_event;
    cfg.subscriber_ud = &seen;
    tally_t *h = tally_open(&cfg);
    assert_true(tally_enabled(h));
    for (int i = 0; i < 10; i++) tally_note(h, "x");
    tally_flush(h, 0);
    assert_int_equal(seen, 11);
    tally_close(h, NULL);
    assert_int_equal(seen, 12); /* run_end */
}


/* One convention: a struct zeroed with {0} writes what was set, a real
 * zero needs its bit, misuse is said once. */
static void test_zeroed_structs(void **state)
{
    (void)state;
    th_logs lg = {0};
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.log = th_on_log;
    cfg.log_ud = &lg;
    tally_t *h = open_mem(&cfg);
    tally_step_info a = {0};
    a.loss = 1.5;
    tally_step_end(h, 1, &a);                /* only loss */
    tally_step_info b = {0};
    b.has = TALLY_HAS_LOSS | TALLY_HAS_TOKENS;
    tally_step_end(h, 2, &b);                /* a real zero loss and zero tokens */
    tally_step_info c = {0};
    c.loss = NAN;
    tally_step_end(h, 3, &c);                /* diverged */
    tally_step_info d = {0};
    d.tokens = -5;
    tally_step_end(h, 4, &d);                /* misuse: said once */
    tally_step_end(h, 5, &d);
    tally_request q = {0};
    q.model = "m";
    q.latency_us = 10;
    q.cost_nusd = 1234;                      /* no TALLY_HAS_COST */
    q.energy_j = 2.5;                        /* no TALLY_HAS_ENERGY */
    tally_request_record(h, &q);
    tally_request z = {0};
    z.model = "m";
    tally_request_record(h, &z);             /* nothing optional */
    th_lines l;
    lines_of(h, &l);
    assert_int_equal(l.n, 8);
    json_arena ar;
    json_arena_init(&ar, 1 << 20);
    const jv *v = th_parse(&ar, l.line[1]);
    assert_true(jv_num(jv_get(v, "loss"), 0) == 1.5);
    TH_ABSENT(v, "lr");
    TH_ABSENT(v, "grad_norm");
    TH_ABSENT(v, "tokens");
    TH_ABSENT(v, "wall_us");                 /* no step_begin: not known */
    json_arena_reset(&ar);
    v = th_parse(&ar, l.line[2]);
    TH_INT(v, "loss", 0);
    TH_INT(v, "tokens", 0);
    TH_ABSENT(v, "lr");
    json_arena_reset(&ar);
    v = th_parse(&ar, l.line[3]);
    assert_non_null(jv_get(v, "loss"));
    assert_int_equal(jv_get(v, "loss")->type, JV_NULL);
    json_arena_reset(&ar);
    v = th_parse(&ar, l.line[4]);
    TH_INT(v, "tokens", -5);
    assert_int_equal(lg.n, 1);
    assert_non_null(strstr(lg.last, "negative tokens"));
    json_arena_reset(&ar);
    v = th_parse(&ar, l.line[6]);
    TH_INT(v, "extra.cost_nusd", 1234);
    assert_true(jv_num(th_get(v, "extra.energy_j"), 0) == 2.5);
    json_arena_reset(&ar);
    v = th_parse(&ar, l.line[7]);
    TH_ABSENT(v, "extra.cost_nusd");
    TH_ABSENT(v, "extra.energy_j");
    TH_ABSENT(v, "extra.gpu_util_pct");
    json_arena_free(&ar);
    th_lines_free(&l);
    tally_close(h, NULL);
}

/* step_begin(6), step_begin(7), step_end(7): step 6 is written unfinished,
 * not lost; an end for another number than the open one likewise. */
static void test_spans_not_lost(void **state)
{
    (void)state;
    tally_t *h = open_mem(NULL);
    tally_step_begin(h, 6);
    usleep(1000);
    tally_step_begin(h, 7);
    tally_step_end(h, 7, NULL);
    tally_epoch_begin(h, 1);
    tally_epoch_end(h, 2, NULL);
    th_lines l;
    lines_of(h, &l);
    assert_int_equal(l.n, 5);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const jv *v = th_parse(&a, l.line[1]);
    TH_INT(v, "step", 6);
    TH_TRUE(v, "unfinished");
    assert_true(jv_int(jv_get(v, "wall_us"), 0) >= 1000);
    json_arena_reset(&a);
    v = th_parse(&a, l.line[2]);
    TH_INT(v, "step", 7);
    TH_ABSENT(v, "unfinished");
    assert_non_null(jv_get(v, "wall_us"));
    json_arena_reset(&a);
    v = th_parse(&a, l.line[3]);
    TH_STR(v, "kind", "epoch");
    TH_INT(v, "epoch", 1);
    TH_TRUE(v, "unfinished");
    json_arena_reset(&a);
    v = th_parse(&a, l.line[4]);
    TH_INT(v, "epoch", 2);
    TH_ABSENT(v, "wall_us");
    json_arena_free(&a);
    th_lines_free(&l);
    tally_close(h, NULL);
}

/* A caller's extra_json cannot forge tally's keys, and no line carries
 * two of one key. */
static void test_caller_cannot_forge(void **state)
{
    (void)state;
    tally_t *h = open_mem(NULL);
    tally_request q = {0};
    q.model = "real";
    q.prompt_tokens = 3;
    q.latency_us = 42;
    q.extra_json = "{\"model\":\"forged\",\"ok\":false,\"latency_us\":1,\"x\":1,\"x\":2,\"caller_model\":\"y\","
                   "\"provider\":\"p\"}";
    tally_request_record(h, &q);
    tally_field f[2] = {{"id", TALLY_FIELD_STRING, 0, 0, "mine"}, {"n", TALLY_FIELD_INT, 7, 0, NULL}};
    tally_event(h, "custom", f, 2);
    th_lines l;
    lines_of(h, &l);
    assert_int_equal(l.n, 3);
    json_arena a;
    json_arena_init(&a, 1 << 20);
    const jv *v = th_parse(&a, l.line[1]);
    TH_STR(v, "extra.model", "real");
    TH_INT(v, "extra.latency_us", 42);
    TH_TRUE(v, "extra.ok");
    TH_STR(v, "extra.caller_model", "forged");
    TH_FALSE(v, "extra.caller_ok");
    TH_INT(v, "extra.caller_latency_us", 1);
    TH_STR(v, "extra.caller_provider", "p");
    TH_ABSENT(v, "extra.provider");
    TH_INT(v, "extra.x", 1);
    /* Every key of extra once. */
    const jv *x = jv_get(v, "extra");
    for (const jv *e = x->child; e; e = e->next)
        for (const jv *g = x->child; g != e; g = g->next)
            if (g->keylen == e->keylen && !memcmp(g->key, e->key, e->keylen))
                fail_msg("duplicate key %.*s in %s", (int)e->keylen, e->key, l.line[1]);
    json_arena_reset(&a);
    v = th_parse(&a, l.line[2]);
    TH_STR(v, "field_id", "mine");
    assert_int_equal(strlen(jv_str(jv_get(v, "id"))), 28);
    json_arena_free(&a);
    th_lines_free(&l);
    tally_close(h, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_start),      cmocka_unit_test(test_request_full),
        cmocka_unit_test(test_request_minimal), cmocka_unit_test(test_training_kinds),
        cmocka_unit_test(test_generic_event),  cmocka_unit_test(test_run_end),
        cmocka_unit_test(test_bad_caller_input), cmocka_unit_test(test_null_safety),
        cmocka_unit_test(test_subscriber),
        cmocka_unit_test(test_zeroed_structs), cmocka_unit_test(test_spans_not_lost),
        cmocka_unit_test(test_caller_cannot_forge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
