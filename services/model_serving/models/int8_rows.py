"""int8 with one fp32 scale per row: how an artifact stores its large matrices.

A row's scale is its largest absolute value / 127, so every value is kept to within half a
step of 1/127 of its row's largest. Rows whose values differ greatly in size (the head's
weight of one n-gram across the labels, the change of one output unit of a layer) keep their
own precision; an all-zero row stays exactly zero.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

SCALE_SUFFIX = ".row_scale"


def quantize(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, fp32 scale per row) of a 2-D tensor."""
    matrix = matrix.detach().to(torch.float32).cpu()
    scale = matrix.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    values = torch.round(matrix / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return values.contiguous(), scale.contiguous()


def dequantize(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The fp32 matrix back; raises ValueError when the scale does not fit the values."""
    if values.dtype != torch.int8 or values.ndim != 2 or scale.shape != (values.shape[0],):
        raise ValueError("int8 rows need a 2-D int8 tensor and one scale per row")
    return values.to(torch.float32) * scale.to(torch.float32)[:, None]


def read(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    """`tensors[name]` as fp32: dequantised with its `<name>.row_scale` when it is int8, else as
    stored (fp16 or fp32). Raises ValueError when an int8 matrix's scale is missing or misshapen."""
    values = tensors[name]
    if values.dtype != torch.int8:
        return values.to(torch.float32)
    scale = tensors.get(name + SCALE_SUFFIX)
    if scale is None:
        raise ValueError(f"{name}: int8 values without their row scale")
    return dequantize(values, scale)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file and its metadata, in one read of the file."""
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})  # noqa: SIM118  # safe_open is not iterable
