#!/usr/bin/env python3
"""A small PyTorch training run recorded by tally.

A two-layer next-token model learns a sequence it generates itself (a
noisy modular pattern), on the CPU, for a few hundred steps: every step
(loss, learning rate, gradient norm, tokens), every epoch, an eval per
epoch, and a bad batch that raises and is recovered from.

    python3 examples/python/train_torch.py --out runs
    tally stats runs && tally runs runs
"""
import argparse
import math

import torch
from torch import nn

import tally

VOCAB, CONTEXT = 32, 8


def make_data(n, gen):
    """Sequences whose next token follows from the last one, with some noise."""
    x = torch.randint(0, VOCAB, (n, CONTEXT), generator=gen)
    y = (x[:, -1] * 3 + 1) % VOCAB
    noise = torch.rand(n, generator=gen) < 0.05
    y[noise] = torch.randint(0, VOCAB, (int(noise.sum()),), generator=gen)
    return x, y


class TinyLM(nn.Module):
    def __init__(self, dim=64):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.mlp = nn.Sequential(nn.Linear(dim * CONTEXT, 256), nn.GELU(), nn.Linear(256, VOCAB))

    def forward(self, x):
        return self.mlp(self.emb(x).flatten(1))


def evaluate(model, x, y):
    model.eval()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(x), y).item()
    model.train()
    return loss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs", help="directory of runs (default: runs)")
    ap.add_argument("--steps", type=int, default=300, help="training steps in all (default: 300)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bad-step", type=int, default=None,
                    help="the step whose batch is corrupt (default: a third of the way in)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    train_x, train_y = make_data(args.steps * args.batch // args.epochs + args.batch, gen)
    val_x, val_y = make_data(512, gen)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    steps_per_epoch = max(1, args.steps // args.epochs)
    bad_step = args.steps // 3 if args.bad_step is None else args.bad_step

    with tally.Tally(run_dir=args.out, phase="train", model="tinylm-" + str(sum(p.numel() for p in model.parameters())),
                     backend="cpu", config_json={"lr": 3e-3, "batch": args.batch, "steps": args.steps}) as t:
        step = 0
        for epoch in range(args.epochs):
            with t.epoch(epoch) as ep:
                for i in range(steps_per_epoch):
                    lo = (i * args.batch) % (len(train_x) - args.batch)
                    xb, yb = train_x[lo:lo + args.batch], train_y[lo:lo + args.batch]
                    if step == bad_step:
                        xb = xb.clone()
                        xb[0, 0] = VOCAB + 5          # an id out of the vocabulary: the embedding raises
                    try:
                        with t.step(step) as s:
                            loss = nn.functional.cross_entropy(model(xb), yb)
                            opt.zero_grad()
                            loss.backward()
                            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                            opt.step()
                            s.loss, s.lr, s.grad_norm, s.tokens = loss.item(), sched.get_last_lr()[0], gn.item(), xb.numel()
                            sched.step()
                    except (IndexError, RuntimeError) as e:
                        t.note(f"skipped a corrupt batch at step {step}: {type(e).__name__}")
                    step += 1
                val = evaluate(model, val_x, val_y)
                t.eval("val", loss=val, ppl=math.exp(val), samples=len(val_x))
                ep.val_loss = val
        print(f"run {t.run_id}: {step} steps, val loss {val:.3f}")


if __name__ == "__main__":
    main()
