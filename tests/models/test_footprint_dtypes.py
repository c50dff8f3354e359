"""Every tensor dtype of a checkpoint is counted at its stored size in the footprint (FP8 and
8-bit integers at 8 bits, I32 at 32, ...), checked against torch's own element sizes; a dtype
lowbit does not know is an error naming the tensor, never a guess."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace

import pytest
import torch

from lowbit.errors import ModelSourceError
from lowbit.models.footprint import stored_bits

DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
    torch.float8_e5m2, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
    torch.bool,
]  # fmt: skip


def test_each_dtype_is_counted_at_its_stored_size(tmp_path):
    from safetensors.torch import save_file

    tensors = {f"t{i}": torch.zeros(3, 5, dtype=dt) for i, dt in enumerate(DTYPES)}
    save_file(tensors, tmp_path / "m.safetensors")
    handle = SimpleNamespace(weight_files=(tmp_path / "m.safetensors",))
    got = {key: (n, bits) for key, n, bits in stored_bits(handle)}
    for key, tensor in tensors.items():
        assert got[key] == (15, 15 * tensor.element_size() * 8), (key, tensor.dtype)
    assert got["t4"][1] == 15 * 8 and got["t10"][1] == 15 * 8 and got["t7"][1] == 15 * 32


def test_an_unknown_dtype_is_an_error_naming_the_tensor(tmp_path):
    header = json.dumps({"w": {"dtype": "F6_E3M2", "shape": [4], "data_offsets": [0, 3]}})
    blob = header.encode() + b" " * (-len(header) % 8)
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 3)
    handle = SimpleNamespace(weight_files=(path,))
    with pytest.raises(ModelSourceError, match=r"tensor w has dtype F6_E3M2, whose size"):
        list(stored_bits(handle))
