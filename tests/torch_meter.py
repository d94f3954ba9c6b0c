#!/usr/bin/env python3
"""A METER model in plain torch.nn with METER's parameter names: the reference for the C++ model.

Usage: torch_meter.py --config CONFIG.json --out DIR

No real weights are needed: the script builds METER from the config with
random (fixed-seed) weights and
  1. writes DIR/meter.ckpt, laid out like an official METER Lightning
     checkpoint (including the tensors METER carries but never uses), and
     converts it with weights/convert_meter.py exactly as a user would, into
     DIR/meter.safetensors; the converted names, values and config are checked;
  2. computes METER's forward pass, task losses and every parameter's
     gradient in float64, following METER's code step by step, and writes
     the inputs and the expected outputs to DIR/cases.safetensors.

Weights and inputs are drawn in float32, so the C++ side sees the very
values the float64 reference used. Before writing anything the script
checks its own pieces against independent formulations (nn.MultiheadAttention
for both attention kinds, a hand-written bicubic interpolation, and the
gradients against a finite difference) and exits 1 if one disagrees.

cases.safetensors (F32 unless noted):
  inputs   text_ids (B,L) I32, text_masks (B,L) I32, image (B,3,S,S),
           image_b (B,3,S,S) (NLVR2's second image), image_large (B,3,S2,S2)
           with S2 = S + 2*patch, vqa_targets (B,answers),
           snli_labels / nlvr2_labels / itm_labels (B,) I32
  outputs  text_feats (B,L,D), image_feats (B,G*G+1,D), cls_feats (B,2D),
           for the enabled heads: vqa_logits, vqa_logits_large (the same at
           image_large, with METER's bicubic resize of the position table),
           snli_logits, itm_logits, rank_logits, nlvr2_logits;
           loss (1,) = the sum of the enabled vqa, snli, nlvr2 and itm losses;
           grad.<name>: d loss / d parameter for every tensor the converter keeps
  metadata "model_config" (the config as JSON text) and "seed".
"""
import argparse
import collections
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "weights"))
import stformat  # noqa: E402

SEED = 20240611
BATCH = 3
TEXT_LENGTH = 9
TEXT_LENGTHS = [9, 6, 4]          # real tokens per example; the rest is padding
BOS_ID, EOS_ID = 0, 2             # RoBERTa's <s> and </s>
MASK_BIAS = -10000.0              # transformers 4.6's get_extended_attention_mask
# Sizes of CLIP's text tower, which METER builds but never runs (only its
# shapes end up in the checkpoint, and the converter drops them).
CLIP_TEXT_VOCAB, CLIP_TEXT_CONTEXT, CLIP_TEXT_WIDTH = 50, 7, 16


class Fail(Exception):
    """A failed step or self-check; reported as one message, exit status 1."""


# --- the modules: containers with METER's names; the maths is in the functions below

class ClipBlock(nn.Module):
    """CLIP's ResidualAttentionBlock (pre-LN, QuickGELU MLP)."""

    def __init__(self, width, heads, ffn, eps):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)  # in_proj_weight (3W, W), out_proj
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(collections.OrderedDict([
            ("c_fc", nn.Linear(width, ffn)), ("c_proj", nn.Linear(ffn, width))]))
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.heads = heads


class ClipVisual(nn.Module):
    """vit_model.visual: CLIP's VisualTransformer as METER keeps it (no output projection)."""

    def __init__(self, cfg):
        super().__init__()
        W, p = cfg["vit_width"], cfg["vit_patch_size"]
        grid = cfg["vit_image_size"] // p
        self.class_embedding = nn.Parameter(torch.empty(W))
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, W))
        self.conv1 = nn.Conv2d(3, W, kernel_size=p, stride=p, bias=False)
        self.ln_pre = nn.LayerNorm(W, eps=cfg["vit_layer_norm_eps"])
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ClipBlock(W, cfg["vit_heads"], cfg["vit_ffn_size"], cfg["vit_layer_norm_eps"])
            for _ in range(cfg["vit_layers"]))
        self.ln_post = nn.LayerNorm(W, eps=cfg["vit_layer_norm_eps"])


class ClipModel(nn.Module):
    """vit_model: the visual tower plus the pieces of CLIP's text tower METER builds and never runs."""

    def __init__(self, cfg):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(CLIP_TEXT_CONTEXT, CLIP_TEXT_WIDTH))
        self.visual = ClipVisual(cfg)
        self.token_embedding = nn.Embedding(CLIP_TEXT_VOCAB, CLIP_TEXT_WIDTH)
        self.ln_final = nn.LayerNorm(CLIP_TEXT_WIDTH)


class BertSelfAttention(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)


class BertSelfOutput(nn.Module):
    def __init__(self, width, eps):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)


class BertAttention(nn.Module):
    def __init__(self, width, eps):
        super().__init__()
        self.self = BertSelfAttention(width)
        self.output = BertSelfOutput(width, eps)


class BertDense(nn.Module):
    """BertIntermediate (dense) or BertOutput (dense + LayerNorm)."""

    def __init__(self, inputs, outputs, eps=None):
        super().__init__()
        self.dense = nn.Linear(inputs, outputs)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(outputs, eps=eps)


class BertLayer(nn.Module):
    """RoBERTa's encoder layer, or with cross=True METER's BertCrossLayer."""

    def __init__(self, width, heads, ffn, eps, cross=False):
        super().__init__()
        self.attention = BertAttention(width, eps)
        if cross:
            self.crossattention = BertAttention(width, eps)
        self.intermediate = BertDense(width, ffn)
        self.output = BertDense(ffn, width, eps)
        self.heads = heads


class RobertaEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        T = cfg["text_width"]
        P = cfg["max_text_positions"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], T, padding_idx=cfg["pad_token_id"])
        self.position_embeddings = nn.Embedding(P, T, padding_idx=cfg["pad_token_id"])
        self.token_type_embeddings = nn.Embedding(cfg["text_type_vocab_size"], T)
        self.LayerNorm = nn.LayerNorm(T, eps=cfg["text_layer_norm_eps"])
        self.register_buffer("position_ids", torch.arange(P).expand((1, -1)))


class RobertaModel(nn.Module):
    """text_transformer: embeddings, encoder.layer.N, and the pooler METER never uses."""

    def __init__(self, cfg):
        super().__init__()
        T = cfg["text_width"]
        self.embeddings = RobertaEmbeddings(cfg)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            BertLayer(T, cfg["text_heads"], cfg["text_ffn_size"], cfg["text_layer_norm_eps"])
            for _ in range(cfg["text_layers"]))
        self.pooler = nn.Module()
        self.pooler.dense = nn.Linear(T, T)


class Pooler(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.dense = nn.Linear(width, width)


class ItmHead(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, 2)


def classifier(inputs, hidden, outputs, eps):
    """METER's task head: Linear, LayerNorm, GELU, Linear (indices 0, 1, 3 hold the parameters)."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.LayerNorm(hidden, eps=eps), nn.GELU(),
                         nn.Linear(hidden, outputs))


class Meter(nn.Module):
    """METERTransformerSS's parameters, registered in METER's order."""

    def __init__(self, cfg):
        super().__init__()
        D, T, W = cfg["hidden_size"], cfg["text_width"], cfg["vit_width"]
        self.cfg = cfg
        self.cross_modal_text_transform = nn.Linear(T, D)
        self.cross_modal_image_transform = nn.Linear(W, D)
        self.token_type_embeddings = nn.Embedding(cfg["num_token_types"], D)
        self.vit_model = ClipModel(cfg)
        self.text_transformer = RobertaModel(cfg)

        def cross_layers():
            return nn.ModuleList(
                BertLayer(D, cfg["num_heads"], cfg["ffn_size"], cfg["cross_layer_norm_eps"], cross=True)
                for _ in range(cfg["num_cross_layers"]))
        self.cross_modal_image_layers = cross_layers()
        self.cross_modal_text_layers = cross_layers()
        self.cross_modal_image_pooler = Pooler(D)
        self.cross_modal_text_pooler = Pooler(D)
        eps = cfg["head_layer_norm_eps"]
        if cfg["itm"]:
            self.itm_score = ItmHead(2 * D)
        if cfg["vqa_answers"] > 0:
            self.vqa_classifier = classifier(2 * D, 2 * D, cfg["vqa_answers"], eps)
        if cfg["nlvr2"]:
            self.nlvr2_classifier = classifier(4 * D, 2 * D, 2, eps)
        if cfg["snli"]:
            self.snli_classifier = classifier(2 * D, 2 * D, 3, eps)
        if cfg["rank"]:
            self.rank_output = nn.Linear(2 * D, 1)


def randomize(model, generator):
    """Random, non-trivial float32 values for every parameter (fixed order, fixed seed).

    Matrices ~ N(0, 0.5/sqrt(fan_in)) keep activations of order one through
    the layers; biases ~ N(0, 0.1); LayerNorm weights 1 + N(0, 0.1) and
    biases N(0, 0.1); embedding tables, the class embedding and the position
    tables ~ N(0, 0.5).
    """
    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=generator, dtype=torch.float32) * std + mean

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(normal(module.weight.shape, 0.1, 1.0))
                module.bias.copy_(normal(module.bias.shape, 0.1))
            elif isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(normal(module.weight.shape, 0.5 / math.sqrt(fan_in)))
                if module.bias is not None:
                    module.bias.copy_(normal(module.bias.shape, 0.1))
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(normal(module.weight.shape, 0.5))
            elif isinstance(module, nn.MultiheadAttention):
                width = module.embed_dim
                module.in_proj_weight.copy_(normal(module.in_proj_weight.shape, 0.5 / math.sqrt(width)))
                module.in_proj_bias.copy_(normal(module.in_proj_bias.shape, 0.1))
        for parameter in (model.vit_model.visual.class_embedding,
                          model.vit_model.visual.positional_embedding,
                          model.vit_model.positional_embedding):
            parameter.copy_(normal(parameter.shape, 0.5))


# --- the maths, as METER computes it

def multi_head_attention(queries, keys_values, wq, bq, wk, bk, wv, bv, heads, key_bias=None):
    """softmax(Q K^T / sqrt(head size) + key_bias) V per head; returns the heads' contexts concatenated.

    queries (B, Lq, E), keys_values (B, Lk, E), key_bias (B, Lk) added to every
    query's scores (0 = attend, -10000 = masked) or None.
    """
    B, Lq, E = queries.shape
    Lk = keys_values.shape[1]
    head_size = E // heads

    def split(x, length):  # (B, L, E) -> (B, heads, L, head size)
        return x.reshape(B, length, heads, head_size).transpose(1, 2)

    q = split(F.linear(queries, wq, bq), Lq)
    k = split(F.linear(keys_values, wk, bk), Lk)
    v = split(F.linear(keys_values, wv, bv), Lk)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_size)  # (B, heads, Lq, Lk)
    if key_bias is not None:
        scores = scores + key_bias[:, None, None, :]
    context = torch.softmax(scores, dim=-1) @ v              # (B, heads, Lq, head size)
    return context.transpose(1, 2).reshape(B, Lq, E)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def clip_block(block, x):
    """x (B, N, W) -> (B, N, W): x + attn(ln_1(x)), then x + c_proj(QuickGELU(c_fc(ln_2(x))))."""
    h = block.ln_1(x)
    wq, wk, wv = block.attn.in_proj_weight.chunk(3, dim=0)
    bq, bk, bv = block.attn.in_proj_bias.chunk(3, dim=0)
    context = multi_head_attention(h, h, wq, bq, wk, bk, wv, bv, block.heads)
    x = x + block.attn.out_proj(context)
    return x + block.mlp.c_proj(quick_gelu(block.mlp.c_fc(block.ln_2(x))))


def clip_visual(visual, image, positional_embedding=None):
    """image (B, 3, S, S) -> (B, G*G + 1, W), every token after ln_post.

    positional_embedding overrides the stored table (for another image size).
    """
    table = visual.positional_embedding if positional_embedding is None else positional_embedding
    x = visual.conv1(image)                                  # (B, W, G, G)
    x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)  # (B, G*G, W), row-major patches
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + table                   # (B, G*G + 1, W)
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks:
        x = clip_block(block, x)
    return visual.ln_post(x)


def roberta_position_ids(text_ids, pad_token_id):
    """RoBERTa counts real tokens from pad_token_id + 1; padding tokens get pad_token_id."""
    real = (text_ids != pad_token_id).long()
    return torch.cumsum(real, dim=1) * real + pad_token_id


def roberta_embeddings(embeddings, text_ids, pad_token_id):
    """(B, L) ids -> (B, L, T): LN(word + position + token type 0).

    Both tables have padding_idx = pad_token_id in RoBERTa, so their pad rows
    get no gradient even though padding tokens look them up.
    """
    positions = roberta_position_ids(text_ids, pad_token_id)
    words = F.embedding(text_ids, embeddings.word_embeddings.weight, padding_idx=pad_token_id)
    where = F.embedding(positions, embeddings.position_embeddings.weight, padding_idx=pad_token_id)
    types = embeddings.token_type_embeddings.weight[0]
    return embeddings.LayerNorm(words + where + types)


def bert_attention(attention, heads, hidden, key_bias, context=None):
    """BertAttention: LN(dense(attention(hidden -> context or itself)) + hidden)."""
    source = hidden if context is None else context
    s = attention.self
    ctx = multi_head_attention(hidden, source, s.query.weight, s.query.bias, s.key.weight,
                               s.key.bias, s.value.weight, s.value.bias, heads, key_bias)
    return attention.output.LayerNorm(attention.output.dense(ctx) + hidden)


def bert_feed_forward(layer, x):
    """LN(output.dense(GELU(intermediate.dense(x))) + x), GELU with erf."""
    return layer.output.LayerNorm(layer.output.dense(F.gelu(layer.intermediate.dense(x))) + x)


def bert_layer(layer, x, bias):
    """A post-LN RoBERTa layer; bias (B, L) is the additive key mask."""
    return bert_feed_forward(layer, bert_attention(layer.attention, layer.heads, x, bias))


def bert_cross_layer(layer, h, other, own_bias, other_bias):
    """METER's BertCrossLayer: self-attention, cross-attention to `other`, feed-forward."""
    a = bert_attention(layer.attention, layer.heads, h, own_bias)
    c = bert_attention(layer.crossattention, layer.heads, a, other_bias, context=other)
    return bert_feed_forward(layer, c)


def infer(model, text_ids, text_masks, image, image_token_type, positional_embedding=None):
    """METERTransformerSS.infer: {'text_feats', 'image_feats', 'cls_feats'} for one image batch."""
    cfg = model.cfg
    text_bias = (1.0 - text_masks.to(image.dtype)) * MASK_BIAS      # (B, L)
    x = roberta_embeddings(model.text_transformer.embeddings, text_ids, cfg["pad_token_id"])
    for layer in model.text_transformer.encoder.layer:
        x = bert_layer(layer, x, text_bias)
    x = model.cross_modal_text_transform(x)                          # (B, L, D)

    y = clip_visual(model.vit_model.visual, image, positional_embedding)
    y = model.cross_modal_image_transform(y)                         # (B, N, D)
    image_bias = torch.zeros(y.shape[0], y.shape[1], dtype=y.dtype)  # the image mask is all ones

    types = model.token_type_embeddings.weight
    x = x + types[0]
    y = y + types[image_token_type]
    for text_layer, image_layer in zip(model.cross_modal_text_layers, model.cross_modal_image_layers):
        x1 = bert_cross_layer(text_layer, x, y, text_bias, image_bias)
        y1 = bert_cross_layer(image_layer, y, x, image_bias, text_bias)
        x, y = x1, y1
    text_pooled = torch.tanh(model.cross_modal_text_pooler.dense(x[:, 0]))
    image_pooled = torch.tanh(model.cross_modal_image_pooler.dense(y[:, 0]))
    return {"text_feats": x, "image_feats": y, "cls_feats": torch.cat([text_pooled, image_pooled], -1)}


def resize_positions(table, grid_after):
    """METER's adapt_position_encoding: bicubic resize of the patch rows; the class row is kept.

    table (G*G + 1, W) -> (grid_after^2 + 1, W).
    """
    W = table.shape[1]
    grid = math.isqrt(table.shape[0] - 1)
    patches = table[1:].reshape(grid, grid, W).permute(2, 0, 1).unsqueeze(0)   # (1, W, G, G)
    patches = F.interpolate(patches, size=(grid_after, grid_after), mode="bicubic",
                            align_corners=False)
    patches = patches.squeeze(0).permute(1, 2, 0).reshape(-1, W)
    return torch.cat([table[:1], patches], dim=0)


def task_outputs(model, batch, large_positions=None):
    """Every enabled head's output and the summed loss, as METER's objectives compute them."""
    cfg = model.cfg
    first = infer(model, batch["text_ids"], batch["text_masks"], batch["image"], 1)
    cls = first["cls_feats"]
    out = {"text_feats": first["text_feats"], "image_feats": first["image_feats"], "cls_feats": cls}
    losses = []
    if cfg["vqa_answers"] > 0:
        logits = model.vqa_classifier(cls)
        out["vqa_logits"] = logits
        # METER scales the mean binary cross-entropy by the number of answers.
        losses.append(F.binary_cross_entropy_with_logits(logits, batch["vqa_targets"])
                      * logits.shape[1])
        if large_positions is not None:
            large = infer(model, batch["text_ids"], batch["text_masks"], batch["image_large"], 1,
                          positional_embedding=large_positions)
            out["vqa_logits_large"] = model.vqa_classifier(large["cls_feats"])
    if cfg["snli"]:
        out["snli_logits"] = model.snli_classifier(cls)
        losses.append(F.cross_entropy(out["snli_logits"], batch["snli_labels"]))
    if cfg["itm"]:
        out["itm_logits"] = model.itm_score.fc(cls)
        losses.append(F.cross_entropy(out["itm_logits"], batch["itm_labels"]))
    if cfg["rank"]:
        out["rank_logits"] = model.rank_output(cls)  # compared, not part of the loss
    if cfg["nlvr2"]:
        second = infer(model, batch["text_ids"], batch["text_masks"], batch["image_b"], 2)
        pair = torch.cat([cls, second["cls_feats"]], dim=-1)          # (B, 4D)
        out["nlvr2_logits"] = model.nlvr2_classifier(pair)
        losses.append(F.cross_entropy(out["nlvr2_logits"], batch["nlvr2_labels"]))
    out["loss"] = sum(losses) if losses else torch.zeros((), dtype=cls.dtype)
    return out


# --- inputs

def make_inputs(cfg, generator):
    """The test batch; float values drawn in float32 (as the C++ side will read them)."""
    vocab, pad = cfg["vocab_size"], cfg["pad_token_id"]
    if vocab <= 3 or pad in (BOS_ID, EOS_ID):
        raise Fail(f"the config's vocabulary ({vocab}) / pad id ({pad}) leave no room for test tokens")
    ids = torch.full((BATCH, TEXT_LENGTH), pad, dtype=torch.long)
    masks = torch.zeros(BATCH, TEXT_LENGTH, dtype=torch.long)
    for b, length in enumerate(TEXT_LENGTHS):
        middle = torch.randint(3, vocab, (length - 2,), generator=generator)
        ids[b, :length] = torch.cat([torch.tensor([BOS_ID]), middle, torch.tensor([EOS_ID])])
        masks[b, :length] = 1
    if TEXT_LENGTH + pad + 1 > cfg["max_text_positions"]:
        raise Fail(f"max_text_positions {cfg['max_text_positions']} is too small for "
                   f"{TEXT_LENGTH} tokens")

    S, p = cfg["vit_image_size"], cfg["vit_patch_size"]
    S2 = S + 2 * p

    def images(size):
        return torch.randn(BATCH, 3, size, size, generator=generator, dtype=torch.float32)

    batch = {"text_ids": ids, "text_masks": masks, "image": images(S), "image_b": images(S),
             "image_large": images(S2)}
    answers = max(cfg["vqa_answers"], 1)
    targets = torch.zeros(BATCH, answers, dtype=torch.float32)
    scores = torch.tensor([0.3, 0.6, 0.9, 1.0])
    for b in range(BATCH):  # two to three scored answers per question, the rest 0
        picked = torch.randperm(answers, generator=generator)[: 2 + b % 2]
        targets[b, picked] = scores[torch.randint(0, 4, (len(picked),), generator=generator)]
    batch["vqa_targets"] = targets[:, : cfg["vqa_answers"]]
    batch["snli_labels"] = torch.tensor([2, 0, 1])
    batch["nlvr2_labels"] = torch.tensor([1, 0, 1])
    batch["itm_labels"] = torch.tensor([0, 1, 1])
    return batch


# --- self-checks against independent formulations

def check_close(what, got, want, tol):
    err = (got - want).abs().max().item() if got.numel() else 0.0
    scale = max(want.abs().max().item() if want.numel() else 0.0, 1.0)
    if not err <= tol * scale:
        raise Fail(f"self-check failed: {what}: max difference {err:.3g} (tolerance {tol * scale:.3g})")
    return err


def bicubic_by_hand(grid_values, size):
    """Separable bicubic resize (Keys, a = -0.75; align_corners=False; edge indices clamped).

    grid_values (C, G, G) numpy -> (C, size, size). This is the rule PyTorch's
    bicubic interpolation follows, written out independently.
    """
    a = -0.75

    def kernel(t):
        t = abs(t)
        if t <= 1:
            return ((a + 2) * t - (a + 3)) * t * t + 1
        if t < 2:
            return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
        return 0.0

    def matrix(n_in, n_out):  # (n_out, n_in) interpolation weights
        m = np.zeros((n_out, n_in))
        for o in range(n_out):
            x = (o + 0.5) * n_in / n_out - 0.5
            x0 = math.floor(x)
            for k in range(x0 - 1, x0 + 3):
                m[o, min(max(k, 0), n_in - 1)] += kernel(x - k)
        return m

    m = matrix(grid_values.shape[1], size)
    return np.einsum("oi,cij,pj->cop", m, grid_values, m)


def self_checks(model, batch):
    """Checks the reference's pieces against independent ones; returns a summary string."""
    cfg = model.cfg
    torch.manual_seed(0)
    errors = []
    # CLIP block attention vs nn.MultiheadAttention itself (sequence-first, as CLIP calls it).
    block = model.vit_model.visual.transformer.resblocks[0]
    x = torch.randn(BATCH, 5, cfg["vit_width"], dtype=torch.float64)
    wq, wk, wv = block.attn.in_proj_weight.chunk(3, dim=0)
    bq, bk, bv = block.attn.in_proj_bias.chunk(3, dim=0)
    mine = block.attn.out_proj(multi_head_attention(x, x, wq, bq, wk, bk, wv, bv, block.heads))
    theirs = block.attn(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1),
                        need_weights=False)[0].transpose(0, 1)
    errors.append(check_close("CLIP attention vs nn.MultiheadAttention", mine, theirs, 1e-12))

    # Masked BERT cross-attention vs nn.MultiheadAttention with the same weights and an additive mask.
    layer = model.cross_modal_text_layers[0].crossattention.self
    D, heads = cfg["hidden_size"], cfg["num_heads"]
    q_in = torch.randn(BATCH, 4, D, dtype=torch.float64)
    kv_in = torch.randn(BATCH, TEXT_LENGTH, D, dtype=torch.float64)
    bias = (1.0 - batch["text_masks"].double()) * MASK_BIAS
    mine = multi_head_attention(q_in, kv_in, layer.query.weight, layer.query.bias, layer.key.weight,
                                layer.key.bias, layer.value.weight, layer.value.bias, heads, bias)
    mha = nn.MultiheadAttention(D, heads, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([layer.query.weight, layer.key.weight, layer.value.weight]))
        mha.in_proj_bias.copy_(torch.cat([layer.query.bias, layer.key.bias, layer.value.bias]))
        mha.out_proj.weight.copy_(torch.eye(D))
        mha.out_proj.bias.zero_()
    mask = bias[:, None, None, :].expand(BATCH, heads, 4, TEXT_LENGTH).reshape(BATCH * heads, 4, -1)
    theirs = mha(q_in, kv_in, kv_in, attn_mask=mask, need_weights=False)[0]
    errors.append(check_close("masked BERT attention vs nn.MultiheadAttention", mine, theirs, 1e-12))

    # RoBERTa positions, written out by hand: pad_token_id + 1, + 2, ... for real tokens.
    pad = cfg["pad_token_id"]
    for b, length in enumerate(TEXT_LENGTHS):
        want = list(range(pad + 1, pad + 1 + length)) + [pad] * (TEXT_LENGTH - length)
        if roberta_position_ids(batch["text_ids"], pad)[b].tolist() != want:
            raise Fail("self-check failed: RoBERTa position ids")

    # Bicubic resize of the position table vs the hand-written rule.
    table = model.vit_model.visual.positional_embedding.detach()
    grid = cfg["vit_image_size"] // cfg["vit_patch_size"]
    resized = resize_positions(table, grid + 2)
    patches = table[1:].reshape(grid, grid, -1).permute(2, 0, 1).numpy()
    by_hand = torch.from_numpy(bicubic_by_hand(patches, grid + 2))       # (W, G+2, G+2)
    by_hand = by_hand.permute(1, 2, 0).reshape(-1, table.shape[1])
    errors.append(check_close("bicubic resize vs the hand-written rule", resized[1:], by_hand, 1e-12))
    if not torch.equal(resized[:1], table[:1]):
        raise Fail("self-check failed: the class row must survive the resize unchanged")
    return max(errors)


def directional_check(model, batch, grads):
    """The autograd gradient along a random direction vs a central finite difference of the loss."""
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(SEED + 1)
    direction = {n: torch.randn(p.shape, generator=generator, dtype=torch.float64) for n, p in params.items()}
    predicted = sum((grads[n] * direction[n]).sum().item() for n in params)
    h = 1e-6

    def loss_at(sign):
        with torch.no_grad():
            for n, p in params.items():
                p.add_(direction[n], alpha=sign * h)
            value = task_outputs(model, batch)["loss"].item()
            for n, p in params.items():
                p.sub_(direction[n], alpha=sign * h)
        return value

    measured = (loss_at(1) - loss_at(-1)) / (2 * h)
    if not abs(measured - predicted) <= 1e-6 * max(abs(predicted), 1.0):
        raise Fail(f"self-check failed: gradient along a random direction {predicted:.10g} vs "
                   f"finite difference {measured:.10g}")
    return abs(measured - predicted)


# --- the steps

def write_checkpoint(model, cfg, path):
    """METER's Lightning checkpoint layout: state_dict in float32 plus a few Lightning entries."""
    state_dict = collections.OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "state_dict": state_dict,
        "hyper_parameters": {"config": {"num_heads": cfg["num_heads"], "hidden_size": cfg["hidden_size"],
                                        "image_size": cfg["vit_image_size"]}},
    }
    torch.save(checkpoint, path)
    return state_dict


def run_converter(cfg, checkpoint, output):
    command = [sys.executable, os.path.join(REPO, "weights", "convert_meter.py"), checkpoint, output,
               "--vit-heads", str(cfg["vit_heads"]), "--text-heads", str(cfg["text_heads"])]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise Fail(f"the converter failed (exit {result.returncode}): {' '.join(command)}\n"
                   f"{result.stdout}{result.stderr}")


def check_converted(path, cfg, state_dict):
    """The converted file must hold exactly the used tensors, bit for bit, and the same config."""
    tensors, metadata = stformat.load(path)
    converted_cfg = json.loads(metadata["config"])
    if converted_cfg != cfg:
        diff = {k: (converted_cfg.get(k), cfg.get(k)) for k in set(cfg) | set(converted_cfg)
                if converted_cfg.get(k) != cfg.get(k)}
        raise Fail(f"the converter's config differs from the input config (converted, given): {diff}")
    dropped = {"vit_model.token_embedding.weight", "vit_model.positional_embedding",
               "vit_model.ln_final.weight", "vit_model.ln_final.bias",
               "text_transformer.pooler.dense.weight", "text_transformer.pooler.dense.bias",
               "text_transformer.embeddings.position_ids"}
    expected = [n for n in state_dict if n not in dropped]
    if sorted(tensors) != sorted(expected):
        raise Fail(f"the converter kept {sorted(set(tensors) ^ set(expected))} wrongly")
    for name in expected:
        if not torch.equal(tensors[name], state_dict[name]):
            raise Fail(f"the converted tensor {name} differs from the checkpoint's")
    return list(tensors)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="model config JSON (configs/*.json schema)")
    parser.add_argument("--out", required=True, help="directory for meter.ckpt, meter.safetensors, "
                                                     "cases.safetensors")
    args = parser.parse_args(argv)
    try:
        with open(args.config) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        print(f"torch_meter: cannot read config '{args.config}': {e}", file=sys.stderr)
        return 1
    try:
        summary = build_cases(cfg, args.out)
    except Fail as e:
        print(f"torch_meter: {e}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def build_cases(cfg, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED)
    model = Meter(cfg)
    randomize(model, generator)
    checkpoint_path = os.path.join(out_dir, "meter.ckpt")
    weights_path = os.path.join(out_dir, "meter.safetensors")
    state_dict = write_checkpoint(model, cfg, checkpoint_path)
    run_converter(cfg, checkpoint_path, weights_path)
    kept = check_converted(weights_path, cfg, state_dict)

    batch32 = make_inputs(cfg, generator)
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in batch32.items()}
    model = model.double().eval()
    attention_error = self_checks(model, batch)

    grid_large = cfg["vit_image_size"] // cfg["vit_patch_size"] + 2
    large_positions = resize_positions(model.vit_model.visual.positional_embedding, grid_large)
    out = task_outputs(model, batch, large_positions)
    params = dict(model.named_parameters())
    missing = [n for n in kept if n not in params]
    if missing:
        raise Fail(f"kept tensors without a parameter in the reference model: {missing}")
    if out["loss"].requires_grad:
        grads = torch.autograd.grad(out["loss"], [params[n] for n in kept], allow_unused=True)
    else:  # no head with a loss is enabled
        grads = [None] * len(kept)
    grads = {n: (g if g is not None else torch.zeros_like(params[n])) for n, g in zip(kept, grads)}
    all_grads = dict(grads)
    for n, p in params.items():
        all_grads.setdefault(n, torch.zeros_like(p))
    fd_error = directional_check(model, batch, all_grads)

    cases = collections.OrderedDict()
    for name in ("text_ids", "text_masks", "image", "image_b", "image_large", "vqa_targets",
                 "snli_labels", "nlvr2_labels", "itm_labels"):
        cases[name] = batch32[name]
    for name in ("vqa_logits", "vqa_logits_large", "snli_logits", "itm_logits", "rank_logits",
                 "nlvr2_logits", "cls_feats", "text_feats", "image_feats"):
        if name in out:
            cases[name] = out[name].detach().float()
    cases["loss"] = out["loss"].detach().reshape(1).float()
    for name in kept:
        cases["grad." + name] = grads[name].float()
    cases_path = os.path.join(out_dir, "cases.safetensors")
    # "model_config", not "config": smarttrim inspect checks a "config" entry against the tensors,
    # and this file holds test cases, not weights.
    stformat.save(cases_path, cases, {"model_config": json.dumps(cfg), "seed": str(SEED)})

    heads = [h for h in ("vqa", "nlvr2", "snli", "itm", "rank")
             if (cfg["vqa_answers"] > 0 if h == "vqa" else cfg[h])]
    return (f"torch_meter: {len(kept)} tensors converted and checked, loss {out['loss'].item():.6f} "
            f"(heads: {', '.join(heads) or 'none'}), {len(cases)} entries in {cases_path}; "
            f"self-checks: attention/bicubic {attention_error:.1e}, gradient vs finite difference "
            f"{fd_error:.1e}")


if __name__ == "__main__":
    sys.exit(main())
