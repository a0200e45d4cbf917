"""A cached teacher's dev scores are those of the run's own scoring settings: on the instruction
track the teacher cache key leaves out `dataset.generation` and `max_eval_samples` (they do not
change the teacher), so a run with new ones scores the cached teacher again, without training it,
in a `role=teacher` run of its own, instead of logging the scores of the run that cached it."""

import json

import mlflow
import pytest
from conftest import TINY_RUN

from kdsuite import tracking_names as names
from kdsuite.run import train
from kdsuite.teacher.cache import META_FILE, cache_entry, recorded_scores

FAST = [
    "experiment=causal_smoke",
    "loss=kd",
    "teacher.finetune.max_steps=4",
    "trainer.max_steps=2",
    "dataset.generation.max_new_tokens=4",
]
OTHER_SCORING = ["dataset.max_eval_samples=2", "dataset.generation.n_seeds=1"]


def runs(cfg, role):
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    found = client.search_runs([experiment.experiment_id], f"tags.{names.ROLE} = '{role}'", order_by=["start_time"])
    return found


def teacher_metrics(student):
    return {key.removeprefix("teacher/"): value for key, value in student.data.metrics.items()
            if key.startswith("teacher/")}


@pytest.mark.e2e
@pytest.mark.slow(seconds=30)
def test_a_cached_teacher_is_scored_again_under_new_scoring_settings(make_config, dolly_jsonl_with_context):
    data = f"dataset.path={dolly_jsonl_with_context}"
    first = make_config(*FAST, data)
    train(first)
    other = make_config(*FAST, data, *OTHER_SCORING)
    assert cache_entry(other).path == cache_entry(first).path  # one teacher: the scoring is not in the key
    train(other)
    train(make_config(*FAST, data, *OTHER_SCORING, "seed=43"))  # the same scoring: read from the record

    finetuned, scored = runs(first, names.TEACHER)  # fine-tuned once, scored once more; no third run
    assert names.SCORED_FROM_CACHE not in finetuned.data.tags
    assert scored.data.tags[names.SCORED_FROM_CACHE] == str(cache_entry(first).path)
    assert "train_summary/runtime" in finetuned.data.metrics
    assert "train_summary/runtime" not in scored.data.metrics  # scored only, never trained
    students = runs(first, names.STUDENT)
    assert [s.data.tags[names.TEACHER_SCORES_RUN_ID] for s in students] == [
        finetuned.info.run_id, scored.info.run_id, scored.info.run_id]
    assert {s.data.tags["teacher_run_id"] for s in students} == {finetuned.info.run_id}  # the weights' run
    for student, teacher in zip(students, [finetuned, scored, scored]):
        logged = teacher_metrics(student)
        assert {"loss", "rougeL"} <= logged.keys()
        assert logged == {name: teacher.data.metrics[f"final/{name}"] for name in logged}
    assert "rougeL_seed1" in teacher_metrics(students[0]) and "rougeL_seed1" not in teacher_metrics(students[1])
    # the validation loss over 2 rows is not the one over all 4: the old cache logged the first
    assert scored.data.metrics["final/loss"] != pytest.approx(finetuned.data.metrics["final/loss"])
    assert "final/rougeL_seed1" in finetuned.data.metrics and "final/rougeL_seed1" not in scored.data.metrics

    meta = json.loads((cache_entry(first).path / META_FILE).read_text())
    assert [s["run_id"] for s in meta["scores"]] == [finetuned.info.run_id, scored.info.run_id]
    assert meta["scores"][1]["scoring"]["generation"]["n_seeds"] == 1


@pytest.mark.e2e
@pytest.mark.slow(seconds=15)
def test_a_teacher_cached_before_scores_were_kept_is_scored_once(make_config, dolly_jsonl_with_context):
    cfg = make_config(*FAST, f"dataset.path={dolly_jsonl_with_context}")
    train(cfg)
    record = cache_entry(cfg).path / META_FILE
    meta = json.loads(record.read_text())
    del meta["scores"]  # as the cache wrote records before: the scoring of `metrics` is unknown
    record.write_text(json.dumps(meta))
    train(make_config(*FAST, f"dataset.path={dolly_jsonl_with_context}", "seed=43"))
    teachers = runs(cfg, names.TEACHER)
    assert [bool(run.data.tags.get(names.SCORED_FROM_CACHE)) for run in teachers] == [False, True]
    assert runs(cfg, names.STUDENT)[-1].data.tags[names.TEACHER_SCORES_RUN_ID] == teachers[1].info.run_id
    assert len(json.loads(record.read_text())["scores"]) == 1


def test_scores_are_found_by_their_scoring_settings():
    meta = {"metrics": {"accuracy": 0.5}, "run_id": "a",
            "scores": [{"scoring": {"generation": {"n_seeds": 2}}, "metrics": {"rougeL": 0.2}, "run_id": "b"}]}
    assert recorded_scores(meta, {}) == {"metrics": {"accuracy": 0.5}, "run_id": "a"}  # the key holds the scoring
    assert recorded_scores(meta, {"generation": {"n_seeds": 2}})["run_id"] == "b"
    assert recorded_scores(meta, {"generation": {"n_seeds": 1}}) is None
    assert recorded_scores({"metrics": {"rougeL": 0.3}}, {"generation": {"n_seeds": 1}}) is None  # an old record


def test_a_glue_teacher_is_scored_by_its_key_alone_unless_used_as_it_comes(make_config):
    """GLUE's key holds the dev rows, so a fine-tuned teacher's scores need nothing beyond it; a
    teacher used as it comes is scored with the student's eval batch size and precision."""
    assert cache_entry(make_config(*TINY_RUN)).scoring == {}
    scoring = cache_entry(make_config(*TINY_RUN, "teacher.finetune=null", "trainer.per_device_eval_batch_size=7"))
    assert scoring.scoring == {"scored_with": {"per_device_eval_batch_size": 7, "bf16": False, "device": "cpu"}}
