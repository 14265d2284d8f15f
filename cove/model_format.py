"""Run a small GGUF model in the weight format with llama.cpp's fast x86 kernels.

The bundled SmolLM2-135M ships as Q4_1. On x86, llama.cpp has no fast matrix kernels for Q4_1 (no
repacked layout, no llamafile tinyBLAS path), so every prompt token goes through the generic
dot-product loop: 250 prompt tokens/s on 2 AVX2 cores, against 435 for the same weights stored as
Q8_0 (benchmarks/model_bench.py, docs/benchmarks.md). Prompt tokens are most of an answer's time.

So a model file stored as Q4_1 or Q5_1, up to `model.convert_max_mb`, is converted once to Q8_0 with
llama.cpp's own quantizer and the copy is what runs. Q8_0 keeps 8 bits per weight against Q4_1's 4
plus a block offset, so the conversion adds at most 1/254 of a block's largest weight to each one:
far under the 4-bit rounding already in the file (`model.convert = "never"` keeps the file as it is).
The conversion runs in a child process, like the self-check: a build that faults there cannot take
Cove down. The copy lives under ``COVE_HOME/models``, named by the source file's identity.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

# llama_ftype values (llama.h) of the formats without fast x86 kernels, and the one they become.
SLOW_ON_X86 = {3: "Q4_1", 9: "Q5_1"}
TARGET_FTYPE, TARGET_NAME = 7, "q8_0"

GGUF_MAGIC = b"GGUF"
# GGUF metadata value types -> struct format of a scalar (8: string, 9: array are read apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
MAX_KEYS = 100_000  # a header claiming more is not a model file
MAX_KEY_BYTES = 1 << 16


class NotGGUF(ValueError):
    """The file is not a GGUF model (or its header is damaged)."""


def gguf_file_type(path: str | os.PathLike) -> int | None:
    """`general.file_type` from a GGUF file's header (None if the header does not say)."""
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise NotGGUF(f"{path} is not a GGUF file")
        version, _tensors, keys = struct.unpack("<IQQ", _read(handle, 20))
        if version < 2 or keys > MAX_KEYS:
            raise NotGGUF(f"{path}: unsupported GGUF header (version {version}, {keys} keys)")
        for _ in range(keys):
            key = _string(handle)
            kind = struct.unpack("<I", _read(handle, 4))[0]
            if key == "general.file_type" and kind in _SCALARS:
                return int(_scalar(handle, kind))
            _skip(handle, kind)
    return None


def _read(handle: BinaryIO, size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise NotGGUF("truncated GGUF header")
    return data


def _string(handle: BinaryIO) -> str:
    length = struct.unpack("<Q", _read(handle, 8))[0]
    if length > MAX_KEY_BYTES:  # a key name; a hostile length must not allocate gigabytes
        raise NotGGUF(f"GGUF key of {length} bytes")
    return _read(handle, length).decode("utf-8", "replace")


def _scalar(handle: BinaryIO, kind: int):
    fmt = "<" + _SCALARS[kind]
    return struct.unpack(fmt, _read(handle, struct.calcsize(fmt)))[0]


def _skip(handle: BinaryIO, kind: int) -> None:
    if kind == 8:
        handle.seek(struct.unpack("<Q", _read(handle, 8))[0], os.SEEK_CUR)
    elif kind == 9:
        item_kind, count = struct.unpack("<IQ", _read(handle, 12))
        if item_kind in _SCALARS:
            handle.seek(struct.calcsize("<" + _SCALARS[item_kind]) * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip(handle, item_kind)
    elif kind in _SCALARS:
        handle.seek(struct.calcsize("<" + _SCALARS[kind]), os.SEEK_CUR)
    else:
        raise NotGGUF(f"unknown GGUF value type {kind}")


def converted_name(source: Path) -> str:
    """The copy's file name: the source's name, size and modification time (a changed file converts anew)."""
    stat = source.stat()
    return f"{source.stem}.{stat.st_size}-{stat.st_mtime_ns}.{TARGET_NAME}.gguf"


def needs_conversion(source: Path, max_mb: int) -> str | None:
    """The slow format's name if `source` should run as a Q8_0 copy, else None."""
    try:
        if source.stat().st_size > max_mb << 20:
            return None
        return SLOW_ON_X86.get(gguf_file_type(source))
    except (NotGGUF, OSError, struct.error):
        return None  # llama.cpp itself will say what is wrong with the file


def convert(source: str, target: str) -> None:
    """In a child process: llama.cpp's quantizer, `source` -> Q8_0 `target`."""
    import llama_cpp

    from cove.cpu import usable_cores

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = TARGET_FTYPE
    params.allow_requantize = True  # the source is already quantized: that is the point
    params.nthread = usable_cores()
    status = llama_cpp.llama_model_quantize(source.encode(), target.encode(), params)
    if status != 0:
        raise RuntimeError(f"llama.cpp could not convert {source} (status {status})")
