#!/usr/bin/env python3
"""PyTorch's side of build/bench_meter: the same two runs on the same shapes.

METER is built from tests/torch_meter.py (torch.nn pieces under METER's
names, the reference the tests compare with), in float32, with as many
threads as the C++ side uses. Prints one line per run: "<ms> <label>".

Usage: torch_meter_bench.py REPS THREADS
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import torch_meter  # noqa: E402


def load_config(name):
    with open(os.path.join(HERE, "..", "configs", name + ".json")) as f:
        return json.load(f)


def inputs(cfg, batch, text_len, generator):
    ids = torch.randint(3, cfg["vocab_size"] - 1, (batch, text_len), generator=generator)
    masks = torch.ones(batch, text_len, dtype=torch.long)
    size = cfg["vit_image_size"]
    return ids, masks, torch.randn(batch, 3, size, size, generator=generator)


def median_ms(reps, run):
    run()
    run()  # two warm-up runs, as on the C++ side
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3


def main():
    reps, threads = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)

    cfg = load_config("meter-tiny")
    model = torch_meter.Meter(cfg)
    ids, masks, image = inputs(cfg, 32, 16, g)
    targets = torch.full((32, cfg["vqa_answers"]), 0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01)

    def train_step():
        cls = torch_meter.infer(model, ids, masks, image, 1)["cls_feats"]
        logits = model.vqa_classifier(cls)
        loss = F.binary_cross_entropy_with_logits(logits, targets) * logits.shape[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    print(f"{median_ms(reps, train_step):.3f} meter-tiny train step", flush=True)

    cfg = load_config("meter-base")
    model = torch_meter.Meter(cfg)
    ids, masks, image = inputs(cfg, 1, 40, g)

    def forward():
        with torch.no_grad():
            model.vqa_classifier(torch_meter.infer(model, ids, masks, image, 1)["cls_feats"])

    print(f"{median_ms(reps, forward):.3f} meter-base forward", flush=True)


if __name__ == "__main__":
    main()
