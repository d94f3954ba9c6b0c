#!/usr/bin/env python3
"""The smarttrim weights file from Python: writer, reader and strict checker.

The file is safetensors-compatible, and the conventions here are the C++
writer's (weights/format.cpp), so both sides produce the same bytes:

  u64 little-endian L | L bytes of JSON header | data region

The header is one compact JSON object. "__metadata__" comes first: string
keys to string values, "format": "smarttrim" and "format_version": "1" and
then the caller's entries in key order. One key per tensor follows, in the
order given: {"dtype": "F32"|"I32", "shape": [...], "data_offsets": [b, e]},
offsets relative to the data region.

The header text is padded with spaces so the data region starts 64-byte
aligned in the file, and every non-empty tensor starts at a multiple of 64,
so the C++ reader can use a memory map in place. The safetensors library
refuses gaps between tensors, so each gap is itself an entry,
"__padding_<k>__" of dtype U8, holding zero bytes; readers skip them. A
zero-byte tensor sits at the current end, and the file ends where the last
tensor ends.

Command line:  stformat.py --check FILE   (strict safetensors rules + alignment)
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch

ALIGNMENT = 64
PADDING_PREFIX = "__padding_"
RESERVED_PREFIX = "__"
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit; a longer header is corruption
FORMAT_METADATA = {"format": "smarttrim", "format_version": "1"}

# The dtypes our files hold: header tag -> (torch dtype, little-endian numpy dtype).
_DTYPES = {
    "F32": (torch.float32, np.dtype("<f4")),
    "I32": (torch.int32, np.dtype("<i4")),
}
_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1

# Every dtype the safetensors library accepts, with its size in bytes.
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "F64": 8, "I64": 8, "U64": 8,
}


def _align_up(n):
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# --- writing

def _encode(name, tensor):
    """Returns (dtype tag, shape, contiguous little-endian numpy array) for one tensor.

    Floats of any width become float32; integers and bools become int32, so
    the values must fit.
    """
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"tensor '{name}' is a {type(tensor).__name__}, not a torch.Tensor")
    if tensor.layout != torch.strided or tensor.is_quantized:
        raise ValueError(f"tensor '{name}' is not a plain dense tensor (layout {tensor.layout})")
    t = tensor.detach().cpu()
    if t.is_complex():
        raise ValueError(f"tensor '{name}' is complex ({t.dtype}); only real values can be stored")
    if t.is_floating_point():
        tag = "F32"
        t = t.to(torch.float32)
    else:
        tag = "I32"
        if t.dtype != torch.bool and t.numel() > 0:
            low, high = int(t.min()), int(t.max())
            if low < _INT32_MIN or high > _INT32_MAX:
                raise ValueError(f"tensor '{name}' ({t.dtype}) has values in [{low}, {high}], "
                                 f"outside int32")
        t = t.to(torch.int32)
    array = t.contiguous().numpy().astype(_DTYPES[tag][1], copy=False)
    return tag, list(t.shape), np.ascontiguousarray(array)


def _check_metadata(metadata):
    """The metadata in header order: the format entries, then the caller's by key."""
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"metadata must map strings to strings (entry {key!r}: {value!r})")
    merged = dict(FORMAT_METADATA)
    for key in sorted(metadata):
        if key in FORMAT_METADATA:
            if metadata[key] != FORMAT_METADATA[key]:
                raise ValueError(f"metadata '{key}' is reserved (it is '{FORMAT_METADATA[key]}')")
            continue
        merged[key] = metadata[key]
    return merged


def save(path, tensors, metadata=None):
    """Writes tensors (a dict, or (name, tensor) pairs, kept in order) to path.

    Everything is checked before any file is created; the file is written as
    path + ".tmp", synced and renamed onto path, so a failure never leaves a
    partial file at path (nor the .tmp file).
    """
    pairs = list(tensors.items()) if isinstance(tensors, dict) else list(tensors)
    header = {"__metadata__": _check_metadata(metadata)}
    arrays = []  # (offset, array) for the non-empty tensors, in file order
    seen = set()
    cursor = 0
    paddings = 0
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError("tensors must be (name, tensor) pairs")
        name, tensor = pair
        if not isinstance(name, str) or not name or name.startswith(RESERVED_PREFIX):
            raise ValueError(f"invalid tensor name {name!r} (empty, not a string, or starts with "
                             f"the reserved '{RESERVED_PREFIX}')")
        if name in seen:
            raise ValueError(f"duplicate tensor name '{name}'")
        seen.add(name)
        tag, shape, array = _encode(name, tensor)
        size = array.nbytes
        if size != 0 and cursor % ALIGNMENT != 0:
            gap = _align_up(cursor) - cursor
            header[f"{PADDING_PREFIX}{paddings}__"] = {
                "dtype": "U8", "shape": [gap], "data_offsets": [cursor, cursor + gap]}
            paddings += 1
            cursor += gap
        header[name] = {"dtype": tag, "shape": shape, "data_offsets": [cursor, cursor + size]}
        if size != 0:
            arrays.append((cursor, array))
        cursor += size

    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    length = _align_up(8 + len(text)) - 8  # the data region starts 64-byte aligned
    text += b" " * (length - len(text))

    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", length))
            f.write(text)
            position = 0
            for offset, array in arrays:
                if offset > position:
                    f.write(bytes(offset - position))
                f.write(memoryview(array.reshape(-1)).cast("B"))
                position = offset + array.nbytes
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


# --- reading

def _no_duplicate_keys(pairs):
    """json object hook: a key given twice is a malformed header, not 'last one wins'."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key '{key}'")
        obj[key] = value
    return obj


def _is_count(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _read_header(path, fail):
    """Returns (open file, header dict, data start, file size); the caller closes the file."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise fail(f"cannot open: {e.strerror}") from None
    try:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise fail("empty file")
        if size < 8:
            raise fail(f"file too short ({size} bytes) to hold the 8-byte header length")
        (length,) = struct.unpack("<Q", f.read(8))
        if length > MAX_HEADER_BYTES:
            raise fail(f"header length {length} is absurd (more than {MAX_HEADER_BYTES} bytes)")
        if length > size - 8:
            raise fail(f"header length {length} runs past the end of the file ({size} bytes)")
        raw = f.read(length)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise fail("header is not valid UTF-8") from None
        try:
            header = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except ValueError as e:
            raise fail(f"header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise fail("header is not a JSON object")
        return f, header, 8 + length, size
    except BaseException:
        f.close()
        raise


def load(path):
    """Reads a weights file: (dict name -> tensor (float32 or int32), metadata dict).

    Tensors come in file order; padding entries are skipped. Every field,
    every range and the absence of overlaps are checked before any data is
    read; anything malformed is a ValueError naming the file.
    """
    def fail(what):
        return ValueError(f"weights file '{path}': {what}")

    f, header, data_start, size = _read_header(path, fail)
    with f:
        data_size = size - data_start
        metadata = {}
        entries = []  # (begin, end, name, dtype tag, shape); paddings have tag None
        for key, value in header.items():
            if key == "__metadata__":
                if not isinstance(value, dict):
                    raise fail("__metadata__ is not an object of strings")
                for mkey, mvalue in value.items():
                    if not isinstance(mvalue, str):
                        raise fail(f"__metadata__ is not an object of strings (value of '{mkey}' "
                                   f"is {type(mvalue).__name__})")
                    metadata[mkey] = mvalue
                continue
            who = f"tensor '{key}': "
            if not isinstance(value, dict):
                raise fail(who + "entry is not an object")
            for field in ("dtype", "shape", "data_offsets"):
                if field not in value:
                    raise fail(who + f"missing '{field}'")
            tag, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
            if not isinstance(tag, str):
                raise fail(who + "'dtype' is not a string")
            padding = key.startswith(PADDING_PREFIX)
            if padding and tag != "U8":
                raise fail(who + f"a padding entry must have dtype U8, not '{tag}'")
            if not padding and tag not in _DTYPES:
                raise fail(who + f"unknown dtype '{tag}' (expected F32 or I32)")
            if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                      for d in shape):
                raise fail(who + "'shape' is not an array of integers")
            for d in shape:
                if d < 0:
                    raise fail(who + f"negative dimension {d} in shape")
            if (not isinstance(offsets, list) or len(offsets) != 2
                    or not all(_is_count(o) for o in offsets)):
                raise fail(who + "'data_offsets' is not two non-negative integers")
            begin, end = offsets
            if end < begin:
                raise fail(who + f"data_offsets end {end} < begin {begin}")
            element = 1 if padding else _DTYPES[tag][1].itemsize
            if _numel(shape) * element != end - begin:
                raise fail(who + f"byte size {end - begin} != numel * dtype size for shape "
                           f"{tuple(shape)} {tag}")
            if end > data_size:
                raise fail(who + f"data range [{begin}, {end}) passes the end of the file "
                           f"(data region is {data_size} bytes)")
            entries.append((begin, end, key, None if padding else tag, shape))

        entries.sort(key=lambda e: (e[0], e[1] - e[0]))
        furthest = None  # the non-empty entry reaching furthest so far
        for entry in entries:
            begin, end, name = entry[0], entry[1], entry[2]
            if end == begin:
                continue
            if furthest is not None and begin < furthest[1]:
                raise fail(f"tensors '{furthest[2]}' and '{name}' overlap")
            if furthest is None or end > furthest[1]:
                furthest = entry

        tensors = {}
        for begin, end, name, tag, shape in entries:
            if tag is None:
                continue
            torch_dtype, np_dtype = _DTYPES[tag]
            if end == begin:
                tensors[name] = torch.empty(shape, dtype=torch_dtype)
                continue
            f.seek(data_start + begin)
            buffer = bytearray(end - begin)
            if f.readinto(buffer) != len(buffer):
                raise fail(f"tensor '{name}': file ended while reading its data")
            array = np.frombuffer(buffer, dtype=np_dtype).astype(np_dtype.newbyteorder("="),
                                                                 copy=False)
            tensors[name] = torch.from_numpy(array).reshape(shape)
    return tensors, metadata


# --- the official library's rules

def check_strict_safetensors(path):
    """Applies the checks the safetensors library makes when it opens a file.

    Raises ValueError naming the first rule broken. On success returns a
    summary: {"tensors": count without paddings, "paddings": count,
    "unaligned": names of non-empty, non-padding tensors whose data does not
    start at a multiple of 64 bytes in the file}. (Beyond the library, a JSON
    key given twice is also refused.)
    """
    def fail(what):
        return ValueError(f"weights file '{path}': {what}")

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise fail(f"header too small: the file has {size} bytes, fewer than the "
                           f"8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise fail(f"header too large: {length} bytes (the limit is {MAX_HEADER_BYTES})")
            if 8 + length > size:
                raise fail(f"invalid header length: 8 + {length} passes the end of the file "
                           f"({size} bytes)")
            raw = f.read(length)
    except OSError as e:
        raise fail(f"cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("invalid header: not valid UTF-8") from None
    if not text.startswith("{"):
        raise fail("invalid header start: the header text must begin with '{'")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as e:
        raise fail(f"invalid header: not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise fail("invalid header: not a JSON object")

    entries = []  # (begin, end, name, dtype tag, shape)
    for key, value in header.items():
        if key == "__metadata__":
            if value is None:
                continue
            if not isinstance(value, dict):
                raise fail("invalid header: __metadata__ is not an object")
            for mkey, mvalue in value.items():
                if not isinstance(mvalue, str):
                    raise fail(f"invalid header: __metadata__ value of '{mkey}' is not a string")
            continue
        who = f"tensor '{key}': "
        if not isinstance(value, dict):
            raise fail(who + "invalid header: the entry is not an object")
        for field in ("dtype", "shape", "data_offsets"):
            if field not in value:
                raise fail(who + f"invalid header: missing field '{field}'")
        tag, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
        if not isinstance(tag, str) or tag not in SAFETENSORS_DTYPE_BYTES:
            raise fail(who + f"invalid header: unknown dtype {tag!r}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise fail(who + "invalid header: 'shape' is not an array of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_count(o) for o in offsets)):
            raise fail(who + "invalid header: 'data_offsets' is not two non-negative integers")
        entries.append((offsets[0], offsets[1], key, tag, shape))

    entries.sort(key=lambda e: (e[0], e[1]))
    cursor = 0
    for begin, end, name, tag, shape in entries:
        if begin != cursor or end < begin:
            raise fail(f"invalid offset: tensor '{name}' has data_offsets [{begin}, {end}], but "
                       f"sorted by offset the tensors must tile the data region and the previous "
                       f"one ends at {cursor}")
        cursor = end
        if _numel(shape) * SAFETENSORS_DTYPE_BYTES[tag] != end - begin:
            raise fail(f"tensor invalid info: tensor '{name}' has {end - begin} bytes, but shape "
                       f"{tuple(shape)} of {tag} needs {_numel(shape) * SAFETENSORS_DTYPE_BYTES[tag]}")
    data_start = 8 + length
    if data_start + cursor != size:
        raise fail(f"metadata incomplete buffer: the tensors end at byte {data_start + cursor} "
                   f"of the file, but the file has {size} bytes")

    unaligned = [name for begin, end, name, _, _ in entries
                 if end > begin and not name.startswith(PADDING_PREFIX)
                 and (data_start + begin) % ALIGNMENT != 0]
    paddings = sum(1 for e in entries if e[2].startswith(PADDING_PREFIX))
    return {"tensors": len(entries) - paddings, "paddings": paddings, "unaligned": unaligned}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Check a weights file against the safetensors library's rules and for "
                    "64-byte alignment of every tensor.")
    parser.add_argument("--check", metavar="FILE", required=True)
    args = parser.parse_args(argv)
    try:
        summary = check_strict_safetensors(args.check)
    except ValueError as e:
        print(f"stformat: {e}", file=sys.stderr)
        return 1
    if summary["unaligned"]:
        names = ", ".join(f"'{n}'" for n in summary["unaligned"][:10])
        more = len(summary["unaligned"]) - 10
        print(f"stformat: weights file '{args.check}': {len(summary['unaligned'])} tensors do not "
              f"start at a multiple of {ALIGNMENT} bytes in the file: {names}"
              + (f" and {more} more" if more > 0 else ""), file=sys.stderr)
        return 1
    print(f"ok: {summary['tensors']} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
