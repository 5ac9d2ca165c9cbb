"""The e5-hybrid model's parts: lexical features, windows, pooling, the base weight reader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from services.model_serving.models import int8_rows
from services.model_serving.models.e5_base import QK, dequantize_q4
from services.model_serving.models.hybrid import (
    HybridConfig,
    LexicalFeatures,
    document_embedding,
    lexical_weight,
    make_windows,
)
from services.model_serving.models.manifest import ModelIntegrityError

CORPUS = [
    "국회, 내년도 예산안 처리 지연… 여야 공방 계속",
    "삼성전자 3분기 영업이익 12조원 돌파  반도체 회복세",
    "손흥민 시즌 10호골…토트넘 3연승",
    "정부, 미세먼지 저감 대책 발표\n\n경유차 운행 제한 확대",
    "AI 반도체 수출 급증, IT 업계 투자 확대",
    "서울 아파트값 3주 연속 상승 — 정부 대책 효과 미미",
]


def _lexical_from(char_vec: TfidfVectorizer, word_vec: TfidfVectorizer) -> LexicalFeatures:
    char_vocab = sorted(char_vec.vocabulary_, key=char_vec.vocabulary_.get)
    word_vocab = sorted(word_vec.vocabulary_, key=word_vec.vocabulary_.get)
    return LexicalFeatures(char_vocab, char_vec.idf_, word_vocab, word_vec.idf_)


def test_lexical_features_equal_scikit_learn_tfidf():
    char_vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True).fit(CORPUS)
    word_vec = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True).fit(CORPUS)
    lexical = _lexical_from(char_vec, word_vec)
    probe = ["예산안 처리 지연, 국회 공방  반도체 반도체", "전혀 새로운 낱말들만"]
    expected = np.hstack([char_vec.transform(probe).toarray(), word_vec.transform(probe).toarray()])
    for row, text in enumerate(probe):
        dense = np.zeros(lexical.size)
        cols, values = lexical.transform(text)
        dense[cols] = values
        np.testing.assert_allclose(dense, expected[row], atol=1e-12)


def test_lexical_features_of_unknown_text_are_empty():
    lexical = LexicalFeatures(["가"], [1.0], ["나다"], [1.0])
    cols, values = lexical.transform("xyz")
    assert cols.size == 0 and values.size == 0


class _Tok:
    bos_id, eos_id = 0, 2


def test_windows_carry_the_prefix_and_special_tokens_and_respect_the_cap():
    ids = list(range(100, 150))
    windows = make_windows(ids, _Tok(), [7, 8], content_tokens=10, overlap=0, max_windows=3)
    assert len(windows) == 3
    for window in windows:
        assert window[:3] == [0, 7, 8] and window[-1] == 2 and len(window) == 14
    assert windows[0][3:-1] == ids[:10] and windows[-1][3:-1] == ids[-10:]


def test_short_text_is_one_window_without_padding():
    windows = make_windows([5, 6, 7], _Tok(), [9], content_tokens=10, overlap=0, max_windows=4)
    assert windows == [[0, 9, 5, 6, 7, 2]]


def test_document_embedding_averages_windows_and_normalises_each_layer_block():
    rows = np.random.default_rng(0).normal(size=(3, 768))
    doc = document_embedding(rows)
    assert doc.shape == (768,)
    assert np.linalg.norm(doc[:384]) == pytest.approx(1.0) and np.linalg.norm(doc[384:]) == pytest.approx(1.0)
    mean = rows.mean(axis=0)[:384]
    np.testing.assert_allclose(doc[:384], mean / np.linalg.norm(mean))


def test_hybrid_config_reads_the_manifest_section():
    config = HybridConfig.from_manifest({"hybrid": {"window_tokens": 128, "pool_layers": [8, 12], "unknown": 1}})
    assert config.window_tokens == 128 and config.pool_layers == (8, 12) and config.prefix == "query: "
    assert HybridConfig.from_manifest(config_manifest := {"hybrid": config.as_dict()}) == config
    assert config_manifest["hybrid"]["pool_layers"] == [8, 12]


def test_q4_dequantisation_follows_the_documented_layout():
    # one block: scale 0.5, byte j holds weight j (low nibble) and weight j+16 (high nibble)
    low = np.arange(16, dtype=np.uint8)
    high = (15 - np.arange(16)).astype(np.uint8)
    raw = np.float16(0.5).tobytes() + (low | (high << 4)).astype(np.uint8).tobytes()
    values = dequantize_q4(raw, 1, QK)
    expected = np.concatenate([(low.astype(np.float32) - 8) * 0.5, (high.astype(np.float32) - 8) * 0.5])
    np.testing.assert_array_equal(values[0], expected)


def test_pooled_encoder_ignores_padding():
    from transformers import BertConfig, BertModel

    from services.model_serving.models.base import pad_batch
    from services.model_serving.models.hybrid import PooledEncoder

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=384, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    pooled = PooledEncoder(BertModel(config, add_pooling_layer=False).eval(), (1, 2))
    short, long = [1, 5, 6, 2], [1, 5, 6, 7, 8, 9, 2]
    with torch.inference_mode():
        alone = pooled(*pad_batch([short], 0))
        together = pooled(*pad_batch([short, long], 0))
    assert alone.shape == (1, 768)
    torch.testing.assert_close(alone[0], together[0], atol=1e-5, rtol=1e-5)


def test_head_ngram_weights_load_from_int8_rows_or_fp16():
    rng = np.random.default_rng(5)
    weight = torch.from_numpy(rng.normal(scale=0.05, size=(50, 4)).astype(np.float32))
    weight[7] = 0.0
    values, scale = int8_rows.quantize(weight)
    loaded = lexical_weight({"lex_weight": values, "lex_weight.row_scale": scale})
    step = weight.abs().amax(dim=1, keepdim=True).numpy() / 127
    assert np.all(np.abs(loaded - weight.numpy()) <= step / 2 + 1e-7), "within half a step of each row's scale"
    assert not loaded[7].any(), "a zero row stays zero"
    assert np.array_equal(lexical_weight({"lex_weight": weight.to(torch.float16)}),
                          weight.to(torch.float16).to(torch.float32).numpy()), "the first artifacts' fp16 head"
    with pytest.raises(ModelIntegrityError, match="row scale"):
        lexical_weight({"lex_weight": values})
    with pytest.raises(ModelIntegrityError, match="one scale per row"):
        lexical_weight({"lex_weight": values, "lex_weight.row_scale": scale[:3]})
