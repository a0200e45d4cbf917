"""Rollout sources end to end on the tiny causal models: `rollout=student lambda=1` trains only on
the student's samples (hooks on `generate` and on the loss), `lambda=0` gives the `dataset`
source's weights bitwise after a step, `rollout=teacher` generates once and later runs (with
`teacher.outputs=cached` too) read the store, fdd's logit lens trains on samples under the JSD, the
cost is logged, and bad settings fail before any work, naming the key."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import TINY_RUN, write_dolly
from omegaconf import open_dict
from safetensors.torch import load_file

from kdsuite.losses.ce import CELoss
from kdsuite.losses.kd import KDLoss
from kdsuite.rollout import sources, teacher_store
from kdsuite.run import train

pytestmark = pytest.mark.e2e

FAST = ["experiment=causal_smoke", "teacher.finetune.max_steps=4", "trainer.max_steps=4",
        "dataset.generation.max_new_tokens=4", "dataset.generation.n_seeds=1", "dataset.generation.log_examples=1",
        "trainer.bf16=false", "teacher.finetune.bf16=false", "mapping=uniform"]
SHORT = "rollout.max_new_tokens=5"  # with a source that generates


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("teacher_cache")


@pytest.fixture
def make_config(make_config, teacher_cache):
    """conftest's make_config with one teacher cache for the module: its runs share the tiny causal
    teacher, fine-tuned once per worker (these tests are about the student's rollouts; the teacher
    rollout's generations are still made by its own test, the only one here that asks for them)."""

    def make(*overrides: str):
        cfg = make_config(*overrides)
        cfg.cache_dir = str(teacher_cache)
        return cfg

    return make


def in_folder(cfg, folder):
    """`cfg` writing its run folder at `folder` (make_config fixes one folder per test)."""
    with open_dict(cfg):
        cfg.output_dir = str(folder)
    return cfg


def student_runs(cfg):
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    found = client.search_runs([experiment.experiment_id], "tags.role = 'student'") if experiment else []
    return client, found


def spy_on(monkeypatch, owner, name):
    """Replace `owner.name` by a wrapper that records each call's result; returns the record."""
    calls = []
    real = getattr(owner, name)

    def recording(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append((args, result))
        return result

    monkeypatch.setattr(owner, name, recording)
    return calls


def spy_on_loss_labels(monkeypatch, loss_class):
    seen = []
    real_forward = loss_class.forward

    def forward(self, student_out, teacher_out, batch):
        seen.append(batch["labels"].detach().cpu().clone())
        return real_forward(self, student_out, teacher_out, batch)

    monkeypatch.setattr(loss_class, "forward", forward)
    return seen


@pytest.mark.slow(seconds=20)
def test_student_rollout_at_lambda_one_trains_only_on_generated_tokens(make_config, dolly_jsonl, monkeypatch):
    generated = spy_on(monkeypatch, sources, "sample_responses")
    seen = spy_on_loss_labels(monkeypatch, KDLoss)
    cfg = make_config(*FAST, f"dataset.path={dolly_jsonl}", "loss=kd", "rollout=student", "rollout.lambda=1", SHORT)
    train(cfg)
    assert len(seen) == len(generated) == 4  # 4 steps, each on samples
    data_rows = set()
    for labels, (_, responses) in zip(seen, generated):
        for row, response in zip(labels, responses):
            assert row[row != -100].tolist() == response.tolist()  # the response tokens are the generated ones
            data_rows.add(tuple(row[row != -100].tolist()))
    assert len(data_rows) > 1
    client, [run] = student_runs(cfg)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["rollout/seconds_per_step"] > 0 and metrics["rollout/tokens_per_second"] > 0
    assert 0 < metrics["rollout/time_fraction"] <= 1 and metrics["rollout/lambda"] == 1.0


def trained_student(make_config, dolly_jsonl, tmp_path, name, *overrides):
    cfg = make_config(*FAST, f"dataset.path={dolly_jsonl}", "trainer.max_steps=1", "trainer.warmup_steps=0",
                      "save_student=true", *overrides)  # no warmup: the one step moves the weights
    train(in_folder(cfg, tmp_path / name))
    return load_file(tmp_path / name / "student" / "model.safetensors")


@pytest.mark.slow(seconds=30)
def test_lambda_zero_equals_the_dataset_source_bitwise_after_a_step(make_config, dolly_jsonl, tmp_path, monkeypatch):
    generated = spy_on(monkeypatch, sources, "sample_responses")
    dataset = trained_student(make_config, dolly_jsonl, tmp_path, "dataset", "loss=kd")
    on_policy = trained_student(make_config, dolly_jsonl, tmp_path, "lambda0", "loss=gkd", "loss.divergence=forward_kl",
                                "loss.alpha=0.5", "rollout.lambda=0", SHORT)
    assert not generated
    assert dataset.keys() == on_policy.keys()
    assert all(torch.equal(dataset[name], on_policy[name]) for name in dataset)
    moved = trained_student(make_config, dolly_jsonl, tmp_path, "lambda1", "loss=gkd", "loss.divergence=forward_kl",
                            "loss.alpha=0.5", "rollout.lambda=1", SHORT)
    assert len(generated) == 1 and not all(torch.equal(dataset[name], moved[name]) for name in dataset)


def test_micro_batches_of_a_step_weigh_one_in_all_when_generated_and_data_text_mix(make_config, tmp_path,
                                                                                     monkeypatch):
    """Under gradient accumulation the micro-batches of one optimizer step must weigh 1 together, whichever
    of them the coin gave generated text: every micro-batch is its own token mean over g (TRL's GKD)."""
    from kdsuite.trainer import DistillationTrainer

    # responses of unequal lengths, so that the data micro-batches of a step hold unequal token counts
    rows = [json.loads(line) for line in write_dolly(tmp_path / "even.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        row["response"] = row["response"].replace(" is ", " is" + " very" * (i % 5) + " ")
    dolly_jsonl = tmp_path / "dolly.jsonl"
    dolly_jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))

    weights = []  # per micro-batch: (optimizer step, generated?, weight the loss entered the step with)
    real_scale, real_batch = DistillationTrainer._scale_for_accumulation, sources.StudentRollout.batch_for_step
    replaced = []

    def batch_for_step(self, model, batch, step, total_steps):
        rolled = real_batch(self, model, batch, step, total_steps)
        replaced.append((step, rolled is not batch))
        return rolled

    def scale(self, loss, labels, num_items_in_batch):
        scaled = real_scale(self, loss, labels, num_items_in_batch)
        if self.rollout is not None:  # the student's steps, not the teacher's fine-tune
            step, generated = replaced[-1]
            weights.append((step, generated, (scaled / loss).item()))
        return scaled

    monkeypatch.setattr(sources.StudentRollout, "batch_for_step", batch_for_step)
    monkeypatch.setattr(DistillationTrainer, "_scale_for_accumulation", scale)
    cfg = make_config(*FAST, f"dataset.path={dolly_jsonl}", "trainer.max_steps=4",
                      "trainer.per_device_train_batch_size=2", "trainer.gradient_accumulation_steps=2", "loss=gkd",
                      "rollout.lambda=0.5", SHORT)
    train(in_folder(cfg, tmp_path / "mixed"))
    steps = {}
    for step, generated, weight in weights:
        steps.setdefault(step, []).append((generated, weight))
    assert sorted(steps) == [0, 1, 2, 3] and all(len(micro) == 2 for micro in steps.values())
    assert any({generated for generated, _ in micro} == {True, False} for micro in steps.values()), steps  # mixed
    for step, micro in steps.items():
        assert sum(weight for _, weight in micro) == pytest.approx(1.0, abs=1e-6), (step, micro)
        assert all(weight == pytest.approx(1 / len(micro), abs=1e-6) for _, weight in micro), (step, micro)


@pytest.mark.slow(seconds=35)
def test_teacher_rollout_generates_once_and_later_runs_read_the_store(make_config, dolly_jsonl, tmp_path,
                                                                      monkeypatch):
    generations = spy_on(monkeypatch, teacher_store, "generate_all")
    seen = spy_on_loss_labels(monkeypatch, CELoss)
    cfg = make_config(*FAST, f"dataset.path={dolly_jsonl}", "loss=seqkd", SHORT)
    train(in_folder(cfg, tmp_path / "first"))
    assert len(generations) == 1
    [manifest] = Path(cfg.cache_dir).glob("teachers/*/generations/*/manifest.json")
    stored = json.loads((manifest.parent / "responses.json").read_text())
    assert len(stored) == len(generations[0][1]) == 16  # 24 rows less 4 validation and 4 test
    stored_rows = {tuple(response) for response in stored}
    student_seen = seen[-4:]  # the student's 4 steps come after the teacher's fine-tune (CE too)
    assert student_seen and all(tuple(row[row != -100].tolist()) in stored_rows
                                for labels in student_seen for row in labels)

    # another seed and loss, with cached teacher outputs (built over the teacher's text): nothing generated
    kd_seen = spy_on_loss_labels(monkeypatch, KDLoss)
    second = make_config(*FAST, f"dataset.path={dolly_jsonl}", "loss=kd", "rollout=teacher", SHORT, "seed=7",
                         "teacher.outputs=cached", "teacher.cache_top_k=8")
    train(in_folder(second, tmp_path / "second"))
    assert len(generations) == 1
    assert kd_seen and all(tuple(row[row != -100].tolist()) in stored_rows for labels in kd_seen for row in labels)
    _, runs = student_runs(second)
    assert sorted(run.info.status for run in runs) == ["FINISHED", "FINISHED"]


@pytest.mark.parametrize("overrides,message", [
    (["loss=gkd", "rollout.lambda=1.5"], r"rollout.lambda=1.5 must lie in \[0, 1\]"),
    (["loss=gkd", "loss.beta=-0.5"], r"loss.beta=-0.5 must lie in \[0, 1\]"),
    (["loss=distillm", "rollout.max_new_tokens=0"], r"rollout.max_new_tokens=0 must be a positive integer"),
    (["loss=gkd", "teacher.outputs=cached"], r"rollout=student .* use teacher.outputs=live"),
])
@pytest.mark.slow(seconds=10)
def test_bad_causal_settings_fail_before_any_work(make_config, dolly_jsonl, monkeypatch, overrides, message):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the settings were checked")

    monkeypatch.setattr("kdsuite.run.job.prepare_teacher", no_work)
    cfg = make_config(*FAST, f"dataset.path={dolly_jsonl}", *overrides)
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert not student_runs(cfg)[1]


def test_student_rollout_on_a_glue_task_fails_before_any_work(make_config, glue_dir, monkeypatch):
    monkeypatch.setattr("kdsuite.run.job.prepare_teacher", lambda *a, **k: pytest.fail("the teacher was prepared"))
    cfg = make_config(*TINY_RUN, "rollout=student")
    with pytest.raises(ValueError, match="rollout=student generates responses; task 'rte' trains sequence classif"):
        train(cfg)


@pytest.mark.slow(seconds=20)
def test_fdd_logit_lens_trains_on_student_samples_with_the_jsd(make_config, dolly_jsonl, monkeypatch):
    """A feature loss on the student's own text, which no paper runs: every term is computed on samples."""
    generated = spy_on(monkeypatch, sources, "sample_responses")
    cfg = make_config(*FAST, f"dataset.path={dolly_jsonl}", "loss=fdd", "mapping=fdd_uniform", "rollout=student",
                      "rollout.lambda=1", SHORT, "loss.divergence=jsd", "loss.beta=0.3", "trainer.max_steps=2",
                      "trainer.logging_steps=1")
    train(cfg)
    assert len(generated) == 2
    client, [run] = student_runs(cfg)
    assert run.info.status == "FINISHED" and run.data.params["loss.beta"] == "0.3"
    for term in ("kd", "traj", "delta"):
        assert [p.step for p in client.get_metric_history(run.info.run_id, f"train/{term}")] == [1, 2], term
