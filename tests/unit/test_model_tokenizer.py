"""The training tokenizer: reproducible, loadable with AutoTokenizer, special tokens as BERT expects."""
from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from services.model_serving.training import train_tokenizer

CORPUS = [
    "Wel come to the 🤗 Tok en izers libr ary.",
    "손흥민 시즌 10호 골…토트넘 역전승",
    "코스피 급락 외국인 매도 환율 상승",
    "국민청원 보건복지 의료 정책 의견",
    "정부 예산안 국회 통과 여야 합의",
] * 3


def _vocab(texts: list[str]) -> list[tuple[str, int]]:
    tokenizer = train_tokenizer(texts, vocab_size=120, max_length=64)
    return sorted(tokenizer.get_vocab().items())


def test_train_tokenizer_is_reproducible() -> None:
    """The plain WordPiece trainer gives a different vocabulary on almost every run on this
    corpus (huggingface/tokenizers#1794); train_tokenizer must give the same one every time."""
    first = _vocab(CORPUS)
    for _ in range(40):
        assert _vocab(CORPUS) == first


def test_saved_tokenizer_loads_with_autotokenizer(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(CORPUS, vocab_size=120, max_length=64)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert type(loaded).__name__ == "PreTrainedTokenizerFast"
    text = "토트넘 역전승 코스피"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    ids = loaded(text)["input_ids"]
    assert ids[0] == loaded.cls_token_id and ids[-1] == loaded.sep_token_id
    assert [loaded.pad_token, loaded.unk_token, loaded.cls_token, loaded.sep_token, loaded.mask_token] == \
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert loaded.pad_token_id == 0
    assert len(loaded.backend_tokenizer.get_added_tokens_decoder()) == 5, "only the five BERT tokens are special"
