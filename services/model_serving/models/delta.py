"""How an artifact stores the encoder parameters training changed (`encoder_delta.safetensors`).

Two encodings, told apart by the file's `encoding` metadata:

- `fp16` (no metadata; the first artifacts): every tuned parameter, whole, in fp16.
- `int8-row-diff`: a weight matrix is stored as its difference from the base weight, in int8
  with one fp32 scale per row (int8_rows.py; the scale under `<name>.row_scale`); vectors
  (biases, LayerNorm) whole, in fp32.

Why differences: fine-tuning moves a weight by far less than the weight's own size, so int8
of the *difference* keeps the change almost exactly (a step of 1/127 of the row's largest
change), where int8 or even fp16 of the whole weight would round part of the change away. It
also halves the size against fp16, which is what lets all 12 layers of a fully fine-tuned
encoder fit the artifact's 50 MB.

Training encodes its tuned parameters and decodes them again before it computes the embeddings
the head is fitted on, so the head sees exactly the numbers serving will load.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from . import int8_rows
from .int8_rows import SCALE_SUFFIX

ENCODING_KEY = "encoding"
INT8_ROW_DIFF = "int8-row-diff"


class DeltaFormatError(ValueError):
    """The delta file does not fit the encoder it is applied to."""


def encode_int8_row_diff(tuned: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]
                         ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) to save for the tuned parameters `tuned`, given the base values of
    the same names."""
    stored: dict[str, torch.Tensor] = {}
    for name, value in tuned.items():
        value = value.detach().to(torch.float32).cpu()
        if value.ndim != 2:
            stored[name] = value.contiguous()
            continue
        stored[name], stored[name + SCALE_SUFFIX] = int8_rows.quantize(value - base[name].to(torch.float32).cpu())
    return stored, {ENCODING_KEY: INT8_ROW_DIFF}


def decode(stored: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None,
           base: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp32 parameter values from a delta file's tensors and metadata; `base` holds the base
    encoder's values (at least those of the stored names)."""
    encoding = (metadata or {}).get(ENCODING_KEY, "fp16")
    names = [k for k in stored if not k.endswith(SCALE_SUFFIX)]
    unknown = sorted(set(names) - set(base))
    if unknown:
        raise DeltaFormatError(f"unknown encoder parameters {unknown[:3]}")
    if encoding == "fp16":
        return {k: stored[k].to(torch.float32) for k in names}
    if encoding != INT8_ROW_DIFF:
        raise DeltaFormatError(f"unknown delta encoding {encoding!r}")
    values: dict[str, torch.Tensor] = {}
    for name in names:
        if stored[name].shape != base[name].shape:
            raise DeltaFormatError(f"{name}: shape {tuple(stored[name].shape)} does not fit the base parameter")
        try:
            value = int8_rows.read(stored, name)
        except ValueError as exc:
            raise DeltaFormatError(str(exc)) from None
        # int8 matrices are differences from the base; everything else is stored whole.
        values[name] = base[name].to(torch.float32) + value if stored[name].dtype == torch.int8 else value
    return values

