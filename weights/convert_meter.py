#!/usr/bin/env python3
"""Convert an official METER checkpoint into a smarttrim weights file.

Usage: convert_meter.py IN OUT [--heads N] [--vit-heads N] [--text-heads N]

IN is a PyTorch Lightning .ckpt of METER (CLIP ViT + RoBERTa), pre-trained
or fine-tuned, or a bare state_dict. The tensor names in OUT are METER's own
state_dict names, so a converted file can be compared name by name with the
checkpoint. Names METER builds but never runs are dropped (each listed with
its reason); a name that fits nowhere stops the conversion. The model's
configuration is inferred from the shapes and stored as JSON text in the
metadata entry "config" (the schema of configs/*.json); OUT holds float32.

Neither METER's code nor transformers / pytorch_lightning is needed: the
torch.save archive is read here with a restricted unpickler that rebuilds
tensors and plain containers and turns every other class into an inert
stand-in (Lightning checkpoints refer to Lightning's classes, e.g. as keys of
the callback state), so nothing in the file runs. Legacy (pre-zip) files go
through torch.load(weights_only=True).

Exit status: 0 on success, 1 for a bad input (one message on stderr, no
output file left behind), 2 for bad command-line usage.
"""
import argparse
import collections
import json
import math
import os
import pickle
import re
import sys
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stformat  # noqa: E402  (lives beside this script)

# Fixed values of METER's architecture that no tensor shape reveals.
CROSS_LAYER_NORM_EPS = 1e-12  # BertCrossLayer's config is a RobertaConfig with the default eps
VIT_LAYER_NORM_EPS = 1e-5     # CLIP's LayerNorm
TEXT_LAYER_NORM_EPS = 1e-5    # roberta-base
HEAD_LAYER_NORM_EPS = 1e-5    # nn.LayerNorm in the task heads
PAD_TOKEN_ID = 1              # RoBERTa's <pad>
DROPOUT = 0.1
HEAD_WIDTH = 64               # CLIP's and the default rule: heads = width // 64

VIT = "vit_model.visual."
TEXT = "text_transformer."

# Names METER's checkpoints carry but the model never uses: name -> reason.
DROPPED_NAMES = {
    "vit_model.token_embedding.weight": "CLIP's text tower, which METER builds but never runs",
    "vit_model.positional_embedding": "CLIP's text tower, which METER builds but never runs",
    "vit_model.ln_final.weight": "CLIP's text tower, which METER builds but never runs",
    "vit_model.ln_final.bias": "CLIP's text tower, which METER builds but never runs",
    "vit_model.visual.proj": "a CLIP projection METER does not use",
    "vit_model.text_projection": "a CLIP projection METER does not use",
    "vit_model.logit_scale": "a CLIP projection METER does not use",
    "text_transformer.pooler.dense.weight": "RoBERTa's pooler, unused by METER",
    "text_transformer.pooler.dense.bias": "RoBERTa's pooler, unused by METER",
    "text_transformer.embeddings.position_ids":
        "a buffer of 0..P-1; positions are computed from the token ids",
}
DROPPED_PREFIXES = {"mlm_score.": "the pre-training masked-LM head, not supported"}

# Per-layer tensor names of each layer stack (suffixes after "<prefix>.<N>.").
CLIP_BLOCK = [
    "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
    "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias",
]
BERT_LAYER = [
    "attention.self.query.weight", "attention.self.query.bias",
    "attention.self.key.weight", "attention.self.key.bias",
    "attention.self.value.weight", "attention.self.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias",
    "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
    "intermediate.dense.weight", "intermediate.dense.bias",
    "output.dense.weight", "output.dense.bias",
    "output.LayerNorm.weight", "output.LayerNorm.bias",
]
CROSS_LAYER = BERT_LAYER[:10] + [s.replace("attention.", "crossattention.", 1)
                                 for s in BERT_LAYER[:10]] + BERT_LAYER[10:]

STACKS = {  # stack -> (name prefix before the index, per-layer suffixes)
    "vit": (VIT + "transformer.resblocks", CLIP_BLOCK),
    "text": (TEXT + "encoder.layer", BERT_LAYER),
    "cross_image": ("cross_modal_image_layers", CROSS_LAYER),
    "cross_text": ("cross_modal_text_layers", CROSS_LAYER),
}

HEAD_PREFIXES = {  # config flag -> name prefix of that optional head
    "vqa": "vqa_classifier.", "nlvr2": "nlvr2_classifier.", "snli": "snli_classifier.",
    "itm": "itm_score.", "rank": "rank_output.",
}
CLASSIFIER = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]

CONFIG_KEYS = [
    "architecture", "hidden_size", "num_heads", "ffn_size", "num_cross_layers",
    "cross_layer_norm_eps", "num_token_types", "vit_width", "vit_heads", "vit_layers",
    "vit_ffn_size", "vit_patch_size", "vit_image_size", "vit_layer_norm_eps", "text_width",
    "text_heads", "text_layers", "text_ffn_size", "vocab_size", "max_text_positions",
    "text_type_vocab_size", "pad_token_id", "text_layer_norm_eps", "head_layer_norm_eps",
    "vqa_answers", "nlvr2", "snli", "itm", "rank", "dropout",
]


class ConversionError(Exception):
    """A problem with the input, reported to the user as one message."""


def _listing(names, limit=40):
    """Indented lines naming the first `limit` entries, then a count of the rest."""
    names = list(names)
    lines = [f"  {n}" for n in names[:limit]]
    if len(names) > limit:
        lines.append(f"  ... and {len(names) - limit} more")
    return "\n".join(lines)


# --- reading the checkpoint

class _StandIn(dict):
    """Takes the place of a class the checkpoint reader will not import.

    It accepts whatever construction and state pickle gives it and does
    nothing; being a dict, dict-like objects (Lightning's AttributeDict,
    sacred's ReadOnlyDict) keep their items.
    """

    def __init__(self, *args, **kwargs):  # pylint: disable=super-init-not-called
        self.pickled_args = (args, kwargs)

    def __setstate__(self, state):
        self.pickled_state = state


class _StorageType:
    """What a pickled torch.<Kind>Storage class stands for here: just its dtype."""

    DTYPES = {
        "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
        "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
        "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
        "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
        "UntypedStorage": torch.uint8,
        "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    }

    def __init__(self, name):
        self.name = name
        self.dtype = self.DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor(_v2): a strided view of a storage (here a 1-D tensor)."""
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _rebuild_parameter(data, *unused):
    return data


def _rebuild_from_type(func, new_type, args, state):
    return func(*args)


class _CheckpointUnpickler(pickle.Unpickler):
    """Reads the data.pkl of a torch.save zip archive without running anything from it.

    Tensors are rebuilt from the archive's storage records and plain
    containers are rebuilt as usual; every other class becomes an inert
    _StandIn, so neither code from the file runs nor must the training
    environment's modules (pytorch_lightning, sacred, ...) be installed.
    """

    _REBUILDERS = {
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type"): _rebuild_from_type,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    }
    _SAFE = {
        "collections": {"OrderedDict"},
        "builtins": {"set", "frozenset", "slice", "complex", "range", "tuple", "list", "dict",
                     "int", "float", "bool", "str", "bytes", "bytearray"},
        "torch": {"Size", "device"},
        "numpy": {"ndarray", "dtype"},
        "numpy.core.multiarray": {"scalar", "_reconstruct"},
        "_codecs": {"encode"},
    }
    _stand_ins = {}

    def __init__(self, file, archive, prefix):
        super().__init__(file, encoding="utf-8")
        self.archive = archive
        self.prefix = prefix
        self.storages = {}  # key -> 1-D tensor, so views of one storage share it

    def find_class(self, module, name):
        if module == "torch" and name in _StorageType.DTYPES:
            return _StorageType(name)
        if (module, name) in self._REBUILDERS:
            return self._REBUILDERS[(module, name)]
        if name in self._SAFE.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        key = (module, name)
        if key not in self._stand_ins:
            self._stand_ins[key] = type(name, (_StandIn,), {"__module__": "stand_in." + module})
        return self._stand_ins[key]

    def persistent_load(self, pid):
        # ('storage', storage type, record key, device it was saved from, element count)
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            element = torch.empty((), dtype=storage_type.dtype).element_size()
            if len(raw) % element:
                raise pickle.UnpicklingError(f"storage record {key} has {len(raw)} bytes, not a "
                                             f"whole number of {storage_type.name} elements")
            self.storages[key] = (torch.frombuffer(raw, dtype=storage_type.dtype) if raw
                                  else torch.empty(0, dtype=storage_type.dtype))
        return self.storages[key]


# How pickle starts a legacy (pre-zip) torch.save file: its magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _load_zip_checkpoint(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ConversionError(f"'{path}' is a zip archive but not a PyTorch checkpoint "
                                  f"(no single <dir>/data.pkl record)")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and archive.read(prefix + "byteorder").strip() != b"little":
            raise ConversionError(f"'{path}' was saved on a big-endian machine; not supported")
        with archive.open(pickles[0]) as data:
            return _CheckpointUnpickler(data, archive, prefix).load()


def _load_legacy_checkpoint(path):
    with open(path, "rb") as f:
        legacy = f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any failure means the file is not one we can read
        if legacy:
            raise ConversionError(f"'{path}' is a legacy (non-zip) torch.save file holding more "
                                  f"than tensors and plain containers; re-save it with a current "
                                  f"torch.save") from None
        raise ConversionError(f"'{path}' is not a PyTorch checkpoint") from None


def read_checkpoint(path):
    """Returns (state_dict, hyper-parameter config dict or {}) from a checkpoint or bare state_dict."""
    if not os.path.exists(path):
        raise ConversionError(f"cannot read '{path}': no such file")
    if not os.path.isfile(path):
        raise ConversionError(f"cannot read '{path}': not a regular file")
    try:
        if zipfile.is_zipfile(path):
            ckpt = _load_zip_checkpoint(path)
        else:
            ckpt = _load_legacy_checkpoint(path)
    except ConversionError:
        raise
    except OSError as e:
        raise ConversionError(f"cannot read '{path}': {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - a damaged archive or pickle can fail in many ways
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConversionError(f"'{path}' is not a readable PyTorch checkpoint ({detail})") from None

    if not isinstance(ckpt, dict):
        raise ConversionError(f"'{path}' holds a {type(ckpt).__name__}, not a checkpoint dict")
    if "state_dict" in ckpt:
        state_dict = ckpt["state_dict"]
        if not isinstance(state_dict, dict):
            raise ConversionError(f"'{path}': 'state_dict' is a {type(state_dict).__name__}, "
                                  f"not a dict of tensors")
        hparams = ckpt.get("hyper_parameters")
        config = hparams.get("config") if isinstance(hparams, dict) else None
        config = config if isinstance(config, dict) else {}
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state_dict, config = ckpt, {}  # a bare state_dict
    else:
        keys = ", ".join(repr(k) for k in list(ckpt)[:8])
        raise ConversionError(f"'{path}' has no 'state_dict' (its top-level keys: {keys or 'none'})")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str)]
    if bad:
        raise ConversionError(f"'{path}': the state_dict has non-string keys, e.g. {bad[0]!r}")
    return state_dict, config


# --- sorting names

_INDEX = r"(0|[1-9][0-9]*)"


def classify(names):
    """Splits names into used / dropped (name -> reason) / unknown; also returns layer indices."""
    stack_patterns = {
        stack: re.compile(re.escape(prefix) + r"\." + _INDEX + r"\.(.+)$")
        for stack, (prefix, _) in STACKS.items()
    }
    fixed = set(fixed_names(heads=HEAD_PREFIXES))
    used, dropped, unknown = [], {}, []
    indices = {stack: set() for stack in STACKS}
    for name in names:
        placed = False
        for stack, pattern in stack_patterns.items():
            m = pattern.match(name)
            if m and m.group(2) in STACKS[stack][1]:
                indices[stack].add(int(m.group(1)))
                placed = True
                break
        if placed or name in fixed:
            used.append(name)
        elif name in DROPPED_NAMES:
            dropped[name] = DROPPED_NAMES[name]
        elif any(name.startswith(p) for p in DROPPED_PREFIXES):
            dropped[name] = next(r for p, r in DROPPED_PREFIXES.items() if name.startswith(p))
        else:
            unknown.append(name)
    return used, dropped, unknown, indices


def fixed_names(heads):
    """The names outside the layer stacks, for the given set of optional heads."""
    names = [
        "cross_modal_text_transform.weight", "cross_modal_text_transform.bias",
        "cross_modal_image_transform.weight", "cross_modal_image_transform.bias",
        "token_type_embeddings.weight",
        VIT + "conv1.weight", VIT + "class_embedding", VIT + "positional_embedding",
        VIT + "ln_pre.weight", VIT + "ln_pre.bias", VIT + "ln_post.weight", VIT + "ln_post.bias",
        TEXT + "embeddings.word_embeddings.weight", TEXT + "embeddings.position_embeddings.weight",
        TEXT + "embeddings.token_type_embeddings.weight",
        TEXT + "embeddings.LayerNorm.weight", TEXT + "embeddings.LayerNorm.bias",
        "cross_modal_image_pooler.dense.weight", "cross_modal_image_pooler.dense.bias",
        "cross_modal_text_pooler.dense.weight", "cross_modal_text_pooler.dense.bias",
    ]
    if "itm" in heads:
        names += ["itm_score.fc.weight", "itm_score.fc.bias"]
    for head in ("vqa", "nlvr2", "snli"):
        if head in heads:
            names += [HEAD_PREFIXES[head] + s for s in CLASSIFIER]
    if "rank" in heads:
        names += ["rank_output.weight", "rank_output.bias"]
    return names


def count_layers(indices):
    """Layers per stack, from the indices seen: they must be 0..L-1 with L >= 1."""
    counts = {}
    for stack, seen in indices.items():
        prefix = STACKS[stack][0]
        if not seen:
            raise ConversionError(f"no layers found under '{prefix}.N.' (expected at least one)")
        expected = set(range(max(seen) + 1))
        if seen != expected:
            holes = sorted(expected - seen)
            raise ConversionError(f"the layers under '{prefix}.N.' are not numbered 0..{max(seen)}: "
                                  f"missing {holes}")
        counts[stack] = len(seen)
    if counts["cross_image"] != counts["cross_text"]:
        raise ConversionError(f"{counts['cross_image']} cross_modal_image_layers but "
                              f"{counts['cross_text']} cross_modal_text_layers; METER pairs them")
    return counts


def expected_shapes(cfg):
    """name -> shape for every tensor the model with this config uses, in METER's order."""
    D, F, W, Fv, T, Ft = (cfg["hidden_size"], cfg["ffn_size"], cfg["vit_width"],
                          cfg["vit_ffn_size"], cfg["text_width"], cfg["text_ffn_size"])
    p, G = cfg["vit_patch_size"], cfg["vit_image_size"] // cfg["vit_patch_size"]
    shapes = collections.OrderedDict()
    shapes["cross_modal_text_transform.weight"] = (D, T)
    shapes["cross_modal_text_transform.bias"] = (D,)
    shapes["cross_modal_image_transform.weight"] = (D, W)
    shapes["cross_modal_image_transform.bias"] = (D,)
    shapes["token_type_embeddings.weight"] = (cfg["num_token_types"], D)

    shapes[VIT + "class_embedding"] = (W,)
    shapes[VIT + "positional_embedding"] = (G * G + 1, W)
    shapes[VIT + "conv1.weight"] = (W, 3, p, p)
    shapes[VIT + "ln_pre.weight"] = shapes[VIT + "ln_pre.bias"] = (W,)
    clip_block = dict(zip(CLIP_BLOCK, [(3 * W, W), (3 * W,), (W, W), (W,), (W,), (W,),
                                       (Fv, W), (Fv,), (W, Fv), (W,), (W,), (W,)]))
    for i in range(cfg["vit_layers"]):
        for suffix, shape in clip_block.items():
            shapes[f"{VIT}transformer.resblocks.{i}.{suffix}"] = shape
    shapes[VIT + "ln_post.weight"] = shapes[VIT + "ln_post.bias"] = (W,)

    shapes[TEXT + "embeddings.word_embeddings.weight"] = (cfg["vocab_size"], T)
    shapes[TEXT + "embeddings.position_embeddings.weight"] = (cfg["max_text_positions"], T)
    shapes[TEXT + "embeddings.token_type_embeddings.weight"] = (cfg["text_type_vocab_size"], T)
    shapes[TEXT + "embeddings.LayerNorm.weight"] = shapes[TEXT + "embeddings.LayerNorm.bias"] = (T,)

    def bert_layer(width, ffn, suffixes):
        out = {}
        for s in suffixes:
            if s.startswith("intermediate."):
                out[s] = (ffn, width) if s.endswith("weight") else (ffn,)
            elif s == "output.dense.weight":
                out[s] = (width, ffn)
            elif s.endswith("weight") and "LayerNorm" not in s:
                out[s] = (width, width)
            else:
                out[s] = (width,)
        return out

    for i in range(cfg["text_layers"]):
        for suffix, shape in bert_layer(T, Ft, BERT_LAYER).items():
            shapes[f"{TEXT}encoder.layer.{i}.{suffix}"] = shape
    for prefix in ("cross_modal_image_layers", "cross_modal_text_layers"):
        for i in range(cfg["num_cross_layers"]):
            for suffix, shape in bert_layer(D, F, CROSS_LAYER).items():
                shapes[f"{prefix}.{i}.{suffix}"] = shape
    for pooler in ("cross_modal_image_pooler", "cross_modal_text_pooler"):
        shapes[pooler + ".dense.weight"] = (D, D)
        shapes[pooler + ".dense.bias"] = (D,)

    if cfg["itm"]:
        shapes["itm_score.fc.weight"] = (2, 2 * D)
        shapes["itm_score.fc.bias"] = (2,)
    heads = [("vqa", 2 * D, cfg["vqa_answers"]), ("nlvr2", 4 * D, 2), ("snli", 2 * D, 3)]
    for head, inputs, outputs in heads:
        if (cfg["vqa_answers"] > 0) if head == "vqa" else cfg[head]:
            prefix = HEAD_PREFIXES[head]
            shapes[prefix + "0.weight"] = (2 * D, inputs)
            shapes[prefix + "0.bias"] = (2 * D,)
            shapes[prefix + "1.weight"] = shapes[prefix + "1.bias"] = (2 * D,)
            shapes[prefix + "3.weight"] = (outputs, 2 * D)
            shapes[prefix + "3.bias"] = (outputs,)
    if cfg["rank"]:
        shapes["rank_output.weight"] = (1, 2 * D)
        shapes["rank_output.bias"] = (1,)
    return shapes


# --- inferring the config

def _dim(state_dict, name, axis, rank):
    """Size of one axis of an anchor tensor, after checking its rank."""
    shape = tuple(state_dict[name].shape)
    if len(shape) != rank:
        raise ConversionError(f"tensor {name} has shape {shape}; expected a rank-{rank} tensor")
    return shape[axis]


def _heads(what, flag_value, width, source):
    """Checks a head count against its width."""
    if flag_value < 1:
        raise ConversionError(f"{what} = {flag_value} ({source}) is not a positive count; "
                              f"give the count with its flag")
    if width % flag_value != 0:
        raise ConversionError(f"{what} = {flag_value} ({source}) does not divide the width {width}")
    return flag_value


def infer_config(state_dict, counts, heads_present, hparams, args):
    """The config (CONFIG_KEYS order) from the tensor shapes, the flags and the hyper-parameters."""
    sd = state_dict
    D = _dim(sd, "cross_modal_text_transform.weight", 0, 2)
    W = _dim(sd, VIT + "conv1.weight", 0, 4)
    p = _dim(sd, VIT + "conv1.weight", 2, 4)
    T = _dim(sd, TEXT + "embeddings.word_embeddings.weight", 1, 2)
    positions = _dim(sd, VIT + "positional_embedding", 0, 2)
    grid = math.isqrt(max(positions - 1, 0))
    if positions < 2 or grid * grid != positions - 1:
        raise ConversionError(f"tensor {VIT}positional_embedding has {positions} rows; expected a "
                              f"class row plus a square grid (G*G + 1)")

    if args.heads is not None:
        num_heads, source = args.heads, "--heads"
    elif "num_heads" in hparams:
        num_heads, source = hparams["num_heads"], "hyper_parameters.config.num_heads"
        if not isinstance(num_heads, int) or isinstance(num_heads, bool):
            raise ConversionError(f"{source} is {num_heads!r}, not an integer; give --heads")
    else:
        num_heads, source = D // HEAD_WIDTH, f"hidden_size // {HEAD_WIDTH}; --heads overrides"
    vit_heads, vit_source = ((args.vit_heads, "--vit-heads") if args.vit_heads is not None
                             else (W // HEAD_WIDTH, f"vit_width // {HEAD_WIDTH}; --vit-heads overrides"))
    text_heads, text_source = ((args.text_heads, "--text-heads") if args.text_heads is not None
                               else (T // HEAD_WIDTH, f"text_width // {HEAD_WIDTH}; --text-heads overrides"))

    num_token_types = _dim(sd, "token_type_embeddings.weight", 0, 2)
    if num_token_types not in (2, 3):
        raise ConversionError(f"tensor token_type_embeddings.weight has {num_token_types} rows; "
                              f"METER has 2 (text, image) or 3 (NLVR2: text, image 1, image 2)")
    if "nlvr2" in heads_present and num_token_types != 3:
        raise ConversionError("the checkpoint has nlvr2_classifier but token_type_embeddings.weight "
                              "has 2 rows; NLVR2 needs a third token type for the second image")

    cfg = {
        "architecture": "meter",
        "hidden_size": D,
        "num_heads": _heads("num_heads", num_heads, D, source),
        "ffn_size": _dim(sd, "cross_modal_text_layers.0.intermediate.dense.weight", 0, 2),
        "num_cross_layers": counts["cross_text"],
        "cross_layer_norm_eps": CROSS_LAYER_NORM_EPS,
        "num_token_types": num_token_types,
        "vit_width": W,
        "vit_heads": _heads("vit_heads", vit_heads, W, vit_source),
        "vit_layers": counts["vit"],
        "vit_ffn_size": _dim(sd, VIT + "transformer.resblocks.0.mlp.c_fc.weight", 0, 2),
        "vit_patch_size": p,
        "vit_image_size": p * grid,
        "vit_layer_norm_eps": VIT_LAYER_NORM_EPS,
        "text_width": T,
        "text_heads": _heads("text_heads", text_heads, T, text_source),
        "text_layers": counts["text"],
        "text_ffn_size": _dim(sd, TEXT + "encoder.layer.0.intermediate.dense.weight", 0, 2),
        "vocab_size": _dim(sd, TEXT + "embeddings.word_embeddings.weight", 0, 2),
        "max_text_positions": _dim(sd, TEXT + "embeddings.position_embeddings.weight", 0, 2),
        "text_type_vocab_size": _dim(sd, TEXT + "embeddings.token_type_embeddings.weight", 0, 2),
        "pad_token_id": PAD_TOKEN_ID,
        "text_layer_norm_eps": TEXT_LAYER_NORM_EPS,
        "head_layer_norm_eps": HEAD_LAYER_NORM_EPS,
        "vqa_answers": (_dim(sd, "vqa_classifier.3.weight", 0, 2) if "vqa" in heads_present else 0),
        "nlvr2": "nlvr2" in heads_present,
        "snli": "snli" in heads_present,
        "itm": "itm" in heads_present,
        "rank": "rank" in heads_present,
        "dropout": DROPOUT,
    }
    assert list(cfg) == CONFIG_KEYS
    if cfg["max_text_positions"] <= PAD_TOKEN_ID + 1:
        raise ConversionError(f"{TEXT}embeddings.position_embeddings.weight has "
                              f"{cfg['max_text_positions']} rows; RoBERTa's positions start at "
                              f"{PAD_TOKEN_ID + 1}")
    return cfg


def hparam_notes(cfg, hparams):
    """Lines noting where the checkpoint's own hyper-parameters disagree with the shapes."""
    pairs = [("hidden_size", "hidden_size"), ("num_top_layer", "num_cross_layers"),
             ("image_size", "vit_image_size"), ("patch_size", "vit_patch_size"),
             ("input_text_embed_size", "text_width"), ("input_image_embed_size", "vit_width")]
    if cfg["vqa_answers"] > 0:
        pairs.append(("vqav2_label_size", "vqa_answers"))
    notes = []
    for hkey, ckey in pairs:
        if hkey in hparams and hparams[hkey] != cfg[ckey]:
            notes.append(f"note: hyper_parameters.config.{hkey} is {hparams[hkey]!r} but the "
                         f"tensors give {ckey} = {cfg[ckey]}; the tensors are used")
    return notes


# --- the conversion

def convert(in_path, out_path, args):
    state_dict, hparams = read_checkpoint(in_path)
    used, dropped, unknown, indices = classify(state_dict)
    if unknown:
        raise ConversionError(f"{len(unknown)} tensors in '{in_path}' fit nowhere in METER:\n"
                              + _listing(unknown))
    counts = count_layers(indices)
    heads_present = {h for h, prefix in HEAD_PREFIXES.items()
                     if any(n.startswith(prefix) for n in used)}

    required = set(fixed_names(heads_present))
    for stack, (prefix, suffixes) in STACKS.items():
        required.update(f"{prefix}.{i}.{s}" for i in range(counts[stack]) for s in suffixes)
    missing = [n for n in sorted(required) if n not in state_dict]
    if missing:
        raise ConversionError(f"{len(missing)} tensors METER needs are missing from '{in_path}':\n"
                              + _listing(missing))

    not_tensors = [n for n in used if not isinstance(state_dict[n], torch.Tensor)]
    if not_tensors:
        raise ConversionError("these entries are not tensors:\n" + _listing(not_tensors))
    cfg = infer_config(state_dict, counts, heads_present, hparams, args)
    shapes = expected_shapes(cfg)
    assert set(shapes) == set(used), "the name lists and the shape table disagree"
    wrong = [f"{n}: shape {tuple(state_dict[n].shape)}, expected {shape}"
             for n, shape in shapes.items() if tuple(state_dict[n].shape) != shape]
    if wrong:
        raise ConversionError(f"{len(wrong)} tensors have a shape that disagrees with the inferred "
                              f"config:\n" + _listing(wrong))

    tensors = collections.OrderedDict()
    source_dtypes = collections.Counter()
    for name in shapes:
        t = state_dict[name]
        source_dtypes[str(t.dtype).replace("torch.", "")] += 1
        if not t.is_floating_point():
            raise ConversionError(f"tensor {name} has dtype {t.dtype}; expected floating point")
        t = t.detach().to(torch.float32).contiguous()
        if not bool(torch.isfinite(t).all()):
            raise ConversionError(f"tensor {name} holds NaN or infinite values")
        tensors[name] = t

    metadata = {"config": json.dumps(cfg), "source": os.path.basename(in_path)}
    try:
        stformat.save(out_path, tensors, metadata)
    except OSError as e:
        raise ConversionError(f"cannot write '{out_path}': {e.strerror or e}") from None

    for line in hparam_notes(cfg, hparams):
        print(line)
    print("config:")
    print(json.dumps(cfg, indent=2))
    for name, reason in dropped.items():
        print(f"dropped {name} ({reason})")
    parameters = sum(t.numel() for t in tensors.values())
    dtypes = ", ".join(f"{n} {d}" for d, n in sorted(source_dtypes.items()))
    print(f"kept {len(tensors)} tensors ({parameters:,} parameters; source: {dtypes}; "
          f"written as float32), dropped {len(dropped)}")
    print(f"wrote {out_path}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="convert_meter.py",
        description="Convert an official METER checkpoint (.ckpt or state_dict) into a smarttrim "
                    "weights file.")
    parser.add_argument("input", metavar="IN", help="METER checkpoint")
    parser.add_argument("output", metavar="OUT", help="weights file to write")
    parser.add_argument("--heads", type=int, metavar="N",
                        help="attention heads of the co-attention layers (default: the checkpoint's "
                             "hyper_parameters.config.num_heads, else hidden_size // 64)")
    parser.add_argument("--vit-heads", type=int, metavar="N",
                        help="attention heads of the CLIP ViT (default: vit_width // 64)")
    parser.add_argument("--text-heads", type=int, metavar="N",
                        help="attention heads of RoBERTa (default: text_width // 64)")
    args = parser.parse_args(argv)
    for flag in ("heads", "vit_heads", "text_heads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be a positive integer")
    if os.path.exists(args.output) and os.path.exists(args.input) and \
            os.path.samefile(args.input, args.output):
        parser.error("IN and OUT are the same file")
    try:
        convert(args.input, args.output, args)
    except ConversionError as e:
        print(f"convert_meter: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
