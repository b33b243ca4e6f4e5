/*
 * train_sim -- a simulated training loop: epochs of steps, an eval per
 * epoch, and one recoverable error.  Events go to runs/<run_id>/events.jsonl.
 *
 *   train_sim [--epochs N] [--steps N] [--runs DIR]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally.h"

int main(int argc, char **argv)
{
    int epochs = 3, steps = 50;
    const char *runs = "runs";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--epochs") == 0 && i + 1 < argc) epochs = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) runs = argv[++i];
        else {
            fprintf(stderr, "usage: train_sim [--epochs N] [--steps N] [--runs DIR]\n");
            return 2;
        }
    }
    if (epochs < 1 || steps < 1) {
        fprintf(stderr, "train_sim: --epochs and --steps must be >= 1\n");
        return 2;
    }
    tally_config cfg;
    tally_config_init(&cfg);
    cfg.run_dir = runs;
    cfg.phase = "train";
    cfg.backend = "cuda";
    cfg.model = "tiny-gpt";
    cfg.model_path = "checkpoints/tiny-gpt";
    cfg.config_json = "{\"lr\":0.0003,\"batch_size\":64,\"seq_len\":512}";
    tally_t *t = tally_open(&cfg);
    tally_run_start(t);

    int64_t step = 0;
    double loss = 4.2;
    char metrics[128];
    for (int e = 0; e < epochs; e++) {
        tally_epoch_begin(t, e);
        for (int s = 0; s < steps; s++, step++) {
            tally_step_begin(t, step);
            /* Pretend to work: a little arithmetic stands in for the GPU. */
            double acc = 0;
            for (int k = 0; k < 300000; k++) acc += sqrt((double)k);
            loss = loss * 0.985 + 0.01 * sin((double)step) + acc * 1e-300;
            tally_step_info info;
            tally_step_info_init(&info);
            info.loss = loss;
            info.lr = 3e-4 * (1.0 - (double)step / (epochs * steps));
            info.grad_norm = 1.0 / (1.0 + (double)step / 10);
            info.tokens = 64 * 512;
            snprintf(metrics, sizeof metrics, "{\"acc\":%.4f}", 1.0 - loss / 5);
            info.metrics_json = metrics;
            if (step == 17) {
                /* A recoverable error: the batch is skipped and training goes on. */
                tally_error_at(t, "DataLoaderError", "corrupt sample in shard 3, batch skipped", "train", step, NULL);
            }
            tally_step_end(t, step, &info);
        }
        tally_eval(t, "val", loss * 1.05, exp(loss * 1.05), 2048, NULL);
        snprintf(metrics, sizeof metrics, "{\"train_loss\":%.4f}", loss);
        tally_epoch_end(t, e, metrics);
    }
    tally_flush(t, 0);
    tally_counters c;
    tally_get_counters(t, &c);
    printf("run %s: %lld steps, final loss %.4f, %llu errors, %llu events written, %llu dropped\n",
           tally_run_id(t), (long long)step, loss, (unsigned long long)c.errors,
           (unsigned long long)c.written, (unsigned long long)c.dropped);
    printf("events: %s/%s/events.jsonl\n", runs, tally_run_id(t));
    tally_close(t, "completed");
    return 0;
}
