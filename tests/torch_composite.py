#!/usr/bin/env python3
"""Float64 PyTorch reference for tests/test_torch_composite.cpp.

A one-layer attention block with a key keep-mask, masked-mean pooling, a
classifier and cross-entropy; the gradients of every parameter, of the input
and of the mask; then three AdamW steps with two parameter groups.

Usage: torch_composite.py OUT_FILE

OUT_FILE format (little-endian), read by the C++ test:
  u32 count, then per tensor:
    u32 name_length, name bytes (ASCII), u32 rank, rank x i64 dims,
    numel x f32 values (row-major)
Names: inputs "x", "mask", "targets" (class indices as floats);
"init/<p>" initial parameters; "logits", "loss"; "grad/<p>", "grad/x",
"grad/mask"; "losses" (loss before each of the 3 steps and after the last);
"final/<p>" parameters after 3 AdamW steps.
"""
import math
import struct
import sys

import torch
import torch.nn.functional as F

B, N, D, H, K, HIDDEN, C = 3, 7, 12, 3, 4, 20, 5

# Matrices get weight decay; biases and LayerNorm parameters do not.
# bk is left out of the optimizer (in the C++ test too): softmax is invariant
# to adding q_i . bk to every score of row i, so its gradient is exactly zero
# in exact arithmetic and mere rounding noise in float32, and AdamW's first
# step, lr * g / (|g| + eps), would turn that noise into +-lr.
MATRICES = ["Wq", "Wk", "Wv", "Wo", "W1", "W2", "Wc"]
VECTORS = ["ln1_w", "ln1_b", "bq", "bv", "bo", "ln2_w", "ln2_b", "b1", "b2", "bc"]


def make_inputs():
    g = torch.Generator().manual_seed(1234)

    def randn(*shape, scale=1.0):
        # Drawn in float32 so the C++ side receives exactly the same values.
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * scale).double()

    p = {
        "ln1_w": 1.0 + randn(D, scale=0.1), "ln1_b": randn(D, scale=0.1),
        "Wq": randn(D, D, scale=0.3), "bq": randn(D, scale=0.1),
        "Wk": randn(D, D, scale=0.3), "bk": randn(D, scale=0.1),
        "Wv": randn(D, D, scale=0.3), "bv": randn(D, scale=0.1),
        "Wo": randn(D, D, scale=0.3), "bo": randn(D, scale=0.1),
        "ln2_w": 1.0 + randn(D, scale=0.1), "ln2_b": randn(D, scale=0.1),
        "W1": randn(HIDDEN, D, scale=0.3), "b1": randn(HIDDEN, scale=0.1),
        "W2": randn(D, HIDDEN, scale=0.3), "b2": randn(D, scale=0.1),
        "Wc": randn(C, D, scale=0.3), "bc": randn(C, scale=0.1),
    }
    # Round the "1 + ..." values to float32 as well.
    p = {k: v.float().double() for k, v in p.items()}
    x = randn(B, N, D)
    mask = torch.ones(B, N, dtype=torch.float64)
    mask[0, [2, 5]] = 0.0
    mask[1, [1, 3, 4, 6]] = 0.0
    mask[2, 6] = 0.0
    targets = torch.tensor([3, 0, 4], dtype=torch.long)
    return p, x, mask, targets


def masked_softmax(a, mask):
    # A_ij = M_j exp(a_ij - m_i) / sum_k M_k exp(a_ik - m_i); mask (B, Nk) over (B, H, Nq, Nk).
    # The gradient a dropped key (M_j = 0) gets is the one it would have if it were
    # added back: its mask enters row i as M_j S_i / (S_i + e_ij), the factor held
    # constant (S_i: the kept keys' sum). Same forward; see engine/ops/softmax.cpp.
    m = a.amax(dim=-1, keepdim=True).detach()
    e = torch.exp(a - m)
    M = mask[:, None, None, :]
    S = (e * M).sum(dim=-1, keepdim=True)
    dropped = (M == 0).to(a.dtype)
    effective = M * (1 - dropped + dropped * (S / (S + e)).detach())
    w = e * effective
    return w / w.sum(dim=-1, keepdim=True)


def forward(p, x, mask, targets):
    def split(t):  # (B, N, H*K) -> (B, H, N, K)
        return t.view(B, N, H, K).transpose(1, 2)

    h = F.layer_norm(x, (D,), p["ln1_w"], p["ln1_b"], eps=1e-5)
    q = split(F.linear(h, p["Wq"], p["bq"]))
    k = split(F.linear(h, p["Wk"], p["bk"]))
    v = split(F.linear(h, p["Wv"], p["bv"]))
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(K))
    a = masked_softmax(scores, mask)
    o = (a @ v).transpose(1, 2).reshape(B, N, D)
    x1 = x + F.linear(o, p["Wo"], p["bo"])
    hidden = F.gelu(F.linear(F.layer_norm(x1, (D,), p["ln2_w"], p["ln2_b"], eps=1e-5), p["W1"], p["b1"]))
    x2 = x1 + F.linear(hidden, p["W2"], p["b2"])
    pooled = (x2 * mask[:, :, None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
    logits = F.linear(pooled, p["Wc"], p["bc"])
    return logits, F.cross_entropy(logits, targets)


def write(path, tensors):
    with open(path, "wb") as f:
        f.write(struct.pack("<I", len(tensors)))
        for name, t in tensors:
            t = t.detach().to(torch.float32).contiguous()
            raw = name.encode("ascii")
            f.write(struct.pack("<I", len(raw)))
            f.write(raw)
            f.write(struct.pack("<I", t.dim()))
            f.write(struct.pack("<%dq" % t.dim(), *t.shape))
            f.write(struct.pack("<%df" % t.numel(), *t.reshape(-1).tolist()))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: torch_composite.py OUT_FILE")
    torch.manual_seed(0)
    p, x, mask, targets = make_inputs()
    out = [("x", x), ("mask", mask), ("targets", targets.double())]
    out += [("init/" + n, t) for n, t in p.items()]

    params = {n: t.clone().requires_grad_(True) for n, t in p.items()}
    x = x.clone().requires_grad_(True)
    mask = mask.clone().requires_grad_(True)
    opt = torch.optim.AdamW(
        [
            {"params": [params[n] for n in MATRICES], "lr": 1e-2, "weight_decay": 0.1},
            {"params": [params[n] for n in VECTORS], "lr": 2e-2, "weight_decay": 0.0},
        ],
        betas=(0.9, 0.98), eps=1e-8)

    losses = []
    for step in range(3):
        opt.zero_grad()
        logits, loss = forward(params, x, mask, targets)
        loss.backward()
        losses.append(loss.item())
        if step == 0:
            out += [("logits", logits), ("loss", loss.reshape(1))]
            # Copies: zero_grad() and later backward passes reuse the buffers.
            out += [("grad/" + n, t.grad.clone()) for n, t in params.items()]
            out += [("grad/x", x.grad.clone()), ("grad/mask", mask.grad.clone())]
            # Adam's first step is lr * sign(g) for |g| >> eps; a gradient
            # near float32 noise would make the comparison fragile.
            smallest = min(params[n].grad.abs().min().item() for n in MATRICES + VECTORS)
            if smallest < 1e-5:
                print("warning: smallest |grad| is %g" % smallest, file=sys.stderr)
        opt.step()
    with torch.no_grad():
        losses.append(forward(params, x, mask, targets)[1].item())
    out.append(("losses", torch.tensor(losses, dtype=torch.float64)))
    out += [("final/" + n, t) for n, t in params.items()]
    write(sys.argv[1], out)


if __name__ == "__main__":
    main()
