"""Tiny random-weight BERT artifacts for tests of model-serving (hot swap, batching, refusal).

Self-contained: the tokenizer is a WordPiece vocabulary built here (the special tokens, ASCII
letters, digits and punctuation, and every Hangul syllable with its "##" continuation form), so
Korean text becomes one token per syllable and a few sentences already make several of the
64-token windows. The weights are random (seeded); the same arguments give the same files.
"""
from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
)

from services.model_serving.models.manifest import write_manifest

TINY_LABELS = ["경제", "스포츠", "정치"]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HANGUL_SYLLABLES = [chr(cp) for cp in range(0xAC00, 0xD7A4)]


@lru_cache(maxsize=1)
def tiny_vocab() -> tuple[str, ...]:
    """Special tokens first ([PAD] = 0), then every piece and its "##" form, in a fixed order."""
    pieces = [*string.ascii_lowercase, *string.digits, *string.punctuation, *HANGUL_SYLLABLES]
    return (*SPECIAL_TOKENS, *pieces, *(f"##{p}" for p in pieces))


def tiny_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer (NFKC + lowercase, [CLS] text [SEP]) over `tiny_vocab`."""
    vocab = {token: i for i, token in enumerate(tiny_vocab())}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=1000))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=max_length, unk_token="[UNK]", pad_token="[PAD]",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def make_tiny_bert(directory: Path, *, name: str = "tiny", version: str = "1", seed: int = 0,
                   labels: list[str] | None = None, max_length: int = 64) -> Path:
    """Writes a verified "bert-sequence-classification" artifact with random weights into `directory`."""
    labels = labels or TINY_LABELS
    directory.mkdir(parents=True, exist_ok=True)
    tiny_tokenizer(max_length).save_pretrained(directory)
    config = BertConfig(vocab_size=len(tiny_vocab()), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=max_length, initializer_range=0.5,
                        num_labels=len(labels), id2label=dict(enumerate(labels)),
                        label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(directory)
    write_manifest(directory, {"name": name, "version": version, "labels": labels,
                               "architecture": "bert-sequence-classification"})
    return directory


def register_tiny_versions(test_db_name: str, store: Path, name: str, sources: dict[int, Path],
                           aliases: dict[str, int]) -> None:
    """Registers `sources` (version number -> artifact directory, in order) as versions of `name`
    in the test database through the real registry (as model-serving's database role), then points
    `aliases` (alias -> version) at them."""
    import asyncio

    from services.common.db import Database
    from services.model_serving.registry import ModelRegistry
    from tests.conftest import DB_HOST, DB_PORT

    async def register() -> None:
        db = Database(f"host={DB_HOST} port={DB_PORT} user=doctag_model dbname={test_db_name}")
        await db.open()
        try:
            registry = ModelRegistry(db, store)
            for version in sorted(sources):
                assert (await registry.register(name, sources[version], created_by="test")).version == version
            for alias, version in aliases.items():
                await registry.set_alias(name, alias, version, by="test")
        finally:
            await db.close()

    asyncio.run(register())
