"""Hand-written safetensors writer/reader for BF16 tensors (no safetensors package here).

File layout: 8-byte little-endian header length N, N bytes of JSON header (padded with spaces to
a multiple of HEADER_ALIGN), then the raw little-endian tensor bytes in header order.
"""

import json
import struct

import numpy as np
import torch

# The reference safetensors writer pads the header so tensor data starts 8-byte aligned.
HEADER_ALIGN = 8


def write_bf16(path, tensors, metadata=None):
    """tensors: {name: float tensor}; each is rounded to bfloat16 (round-to-nearest-even)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous().to(torch.bfloat16)
        raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = metadata or {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGN)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for raw in blobs:
            fh.write(raw)


def read_bf16(path, dtype=torch.float64):
    """{name: tensor in dtype} from a BF16 safetensors file (exact bf16 -> dtype widening)."""
    with open(path, "rb") as fh:
        data = fh.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "BF16":
            raise ValueError(f"{name}: expected BF16, got {info['dtype']}")
        a, b = info["data_offsets"]
        bits = np.frombuffer(data[base + a:base + b], dtype="<u2").astype(np.uint32) << 16
        f32 = bits.view(np.float32).reshape(info["shape"])
        out[name] = torch.from_numpy(f32.copy()).to(dtype)
    return out
