#!/usr/bin/env python3
"""PyTorch's side of build/bench_meter: the same two runs on the same shapes.

METER is built from tests/torch_meter.py (torch.nn pieces under METER's
names, the reference the tests compare with), in float32, with as many
threads as the C++ side uses. Prints one line per run: "<ms> <label>".

On "cuda" everything runs on the GPU with TF32 matrix products (as the
C++ side's default), timed after torch.cuda.synchronize(), and a
METER-base training step at batch 32 is added.

Usage: torch_meter_bench.py REPS THREADS [cpu|cuda]
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


DEVICE = "cpu"


def finish():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def inputs(cfg, batch, text_len, generator):
    ids = torch.randint(3, cfg["vocab_size"] - 1, (batch, text_len), generator=generator)
    masks = torch.ones(batch, text_len, dtype=torch.long)
    size = cfg["vit_image_size"]
    image = torch.randn(batch, 3, size, size, generator=generator)
    return ids.to(DEVICE), masks.to(DEVICE), image.to(DEVICE)


def median_ms(reps, run):
    run()
    run()  # two warm-up runs, as on the C++ side
    finish()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        finish()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3


def train_step_ms(name, batch, text_len, reps, g, image_size=None):
    cfg = load_config(name)
    if image_size:
        cfg["vit_image_size"] = image_size
    model = torch_meter.Meter(cfg).to(DEVICE)
    ids, masks, image = inputs(cfg, batch, text_len, g)
    targets = torch.full((batch, cfg["vqa_answers"]), 0.1, device=DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01)

    def train_step():
        cls = torch_meter.infer(model, ids, masks, image, 1)["cls_feats"]
        logits = model.vqa_classifier(cls)
        loss = F.binary_cross_entropy_with_logits(logits, targets) * logits.shape[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return median_ms(reps, train_step)


def main():
    global DEVICE
    reps, threads = int(sys.argv[1]), int(sys.argv[2])
    DEVICE = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    torch.set_num_threads(threads)
    if DEVICE == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    g = torch.Generator().manual_seed(0)

    print(f"{train_step_ms('meter-tiny', 32, 16, reps, g):.3f} meter-tiny train step", flush=True)

    cfg = load_config("meter-base")
    model = torch_meter.Meter(cfg).to(DEVICE)
    ids, masks, image = inputs(cfg, 1, 40, g)

    def forward():
        with torch.no_grad():
            model.vqa_classifier(torch_meter.infer(model, ids, masks, image, 1)["cls_feats"])

    print(f"{median_ms(reps, forward):.3f} meter-base forward", flush=True)
    if DEVICE == "cuda":
        del model
        print(f"{train_step_ms('meter-base', 32, 40, reps, g, 384):.3f} meter-base train step", flush=True)


if __name__ == "__main__":
    main()
