"""The safetensors format, read and written by hand (no `safetensors` package at runtime).

A file is
    [8 bytes: N, little-endian u64] [N bytes: JSON header, UTF-8] [data area]
and the header maps each tensor name to {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}
(byte offsets into the data area), plus an optional "__metadata__": {str: str}.

Reading validates the whole header before any tensor is made, so a damaged or hostile file raises
`SafetensorsError` (a ValueError naming the file and the key) instead of crashing, hanging or
allocating: the header length must fit in the file and under MAX_HEADER, the header must be a JSON
object with known dtypes, shapes of non-negative ints, byte lengths equal to prod(shape) * itemsize,
and the tensors must tile the data area exactly (sorted, no overlap, no gap, nothing left over).

Tensors are views of a private memory map of the file: opening a file reads only its header, and a
tensor's pages are read when it is used. Writes to a returned tensor never reach the file.
"""
import json
import math
import os
import struct
from pathlib import Path

import torch

MAX_HEADER = 100 * 1024 * 1024   # the same bound as the reference implementation

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)
NAMES = {dt: name for name, dt in DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file (or a tensor in it) is not valid; the message names the file and key."""


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise SafetensorsError(f"duplicate key {k!r} in the JSON header")
        out[k] = v
    return out


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header(raw, file_size, where="<bytes>"):
    """Validate a header (the bytes after the length field) for a file of `file_size` bytes.

    Returns (entries, metadata, data_start): entries maps name -> (dtype, shape, begin, end).
    """
    def fail(msg, key=None):
        raise SafetensorsError(f"{where}: " + (f"tensor {key!r}: " if key is not None else "") + msg)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except SafetensorsError as e:
        fail(str(e))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        fail(f"header is not valid UTF-8 JSON ({type(e).__name__}: {str(e)[:120]})")
    if not isinstance(header, dict):
        fail(f"header must be a JSON object, got {type(header).__name__}")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        fail("__metadata__ must be an object of string to string")
    data_start = 8 + len(raw)
    data_len = file_size - data_start
    entries = {}
    for key, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            fail("entry must be an object with exactly dtype, shape and data_offsets", key)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            fail(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})", key)
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            fail(f"shape must be a list of non-negative integers, got {shape!r}", key)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            fail(f"data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}", key)
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != nbytes:
            fail(f"shape {shape} of {dtype} needs {nbytes} bytes but data_offsets {offsets} "
                 f"span {offsets[1] - offsets[0]}", key)
        if offsets[1] > data_len:
            fail(f"data_offsets {offsets} run past the data area ({data_len} bytes)", key)
        entries[key] = (DTYPES[dtype], tuple(shape), offsets[0], offsets[1])
    end = 0
    for key, (_, _, begin, stop) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != end:
            fail(f"data_offsets start at {begin} but the previous tensor ends at {end} "
                 f"({'overlap' if begin < end else 'gap'})", key)
        end = stop
    if end != data_len:
        fail(f"the tensors cover {end} bytes of a {data_len}-byte data area")
    return entries, metadata or {}, data_start


class SafeOpen:
    """A validated, memory-mapped safetensors file:  with SafeOpen(path) as f: f.get_tensor(key)."""

    def __init__(self, path):
        self.path = str(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{self.path}: not a safetensors file (file of {size} bytes is too short "
                                       f"for a header length)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n > size - 8:
                raise SafetensorsError(f"{self.path}: not a safetensors file (header length {n} exceeds "
                                       f"{'the file' if n > size - 8 else 'the limit of %d bytes' % MAX_HEADER})")
            raw = fh.read(n)
        self.entries, self._metadata, self._data_start = parse_header(raw, size, self.path)
        self._size, self._map = size, None                  # the memory map is made at the first mapped tensor

    @property
    def mapped(self):
        """Whether the file is memory-mapped (it is at the first tensor read through the map, not before)."""
        return self._map is not None

    @property
    def _storage(self):
        if self._map is None and self._size > self._data_start:
            self._map = torch.UntypedStorage.from_file(self.path, shared=False, nbytes=self._size)
        return self._map

    def data_offset(self, key):
        """(byte offset of the tensor `key` in the file, its dtype, its shape): for reading rows with os.pread."""
        if key not in self.entries:
            raise KeyError(f"{self.path}: no tensor {key!r}")
        dtype, shape, begin, _ = self.entries[key]
        return self._data_start + begin, dtype, shape

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def keys(self):
        return list(self.entries)

    def metadata(self):
        return dict(self._metadata)

    def get_tensor(self, key, device="cpu", dtype=None):
        """The tensor as a view of the memory map; with `dtype` (another floating dtype than the stored one),
        read with a plain file read and cast instead, so that no page of the map stays resident and loading
        into another dtype holds only the cast copy (bf16 from an fp16 file: 1x, not 2x, the weights)."""
        if key not in self.entries:
            raise KeyError(f"{self.path}: no tensor {key!r}")
        stored, shape, begin, end = self.entries[key]
        if begin == end:
            return torch.empty(shape, dtype=dtype or stored, device=device)
        start = self._data_start + begin
        if dtype is not None and dtype != stored and stored.is_floating_point:
            buf = torch.empty(end - begin, dtype=torch.uint8)
            with open(self.path, "rb", buffering=0) as fh:
                fh.seek(start)
                if fh.readinto(buf.numpy()) != end - begin:
                    raise SafetensorsError(f"{self.path}: tensor {key!r}: the file ended early")
            return buf.view(stored).reshape(shape).to(device=device, dtype=dtype)
        dtype = stored
        raw = torch.empty(0, dtype=torch.uint8).set_(self._storage, start, (end - begin,))
        if start % dtype.itemsize:            # misaligned for a zero-copy view: copy this one
            raw = raw.clone()
        return raw.view(dtype).reshape(shape).to(device)


def safe_open(path):
    return SafeOpen(path)


def load_file(path, device="cpu", dtype=None):
    """All tensors of a file as a dict (views of the memory map on the CPU; floating ones read and cast
    to `dtype` when given and different, see SafeOpen.get_tensor)."""
    f = SafeOpen(path)
    return {k: f.get_tensor(k, device, dtype) for k in f.keys()}


def save_file(tensors, path, metadata=None):
    """Write tensors (name -> tensor) as safetensors, atomically (temporary file, then rename).

    Tensors are laid out by decreasing item size and the header is padded to 8 bytes, so every
    tensor is aligned in the file and loads as a zero-copy view.
    """
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError(f"{path}: metadata must map str to str")
    header, order, offset = {}, [], 0
    for name, t in sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0])):
        if not isinstance(name, str) or name == "__metadata__":
            raise SafetensorsError(f"{path}: invalid tensor name {name!r}")
        if t.dtype not in NAMES:
            raise SafetensorsError(f"{path}: tensor {name!r}: dtype {t.dtype} has no safetensors name")
        data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + data.numel()]}
        order.append(data)
        offset += data.numel()
    if metadata:
        header = {"__metadata__": dict(metadata), **header}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for data in order:
            fh.write(data.numpy().tobytes())
    os.replace(tmp, path)
