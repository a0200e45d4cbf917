"""DistiLLM's adaptive rollout killed with SIGTERM after a checkpoint, then resumed: the checkpoint
holds `rollout_state.pt` (threshold, validation reference, replay buffer, the coin's RNG), and the
resumed run ends where an uninterrupted one does, its schedule and buffer logged identically. A
checkpoint without the file is refused, naming it. (The approach of test_kill_and_resume.py, on
the causal track.)"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from killed_runs import by_step, kill_at_first_checkpoint, run_py
from omegaconf import open_dict

from kdsuite.rollout.callback import load_state
from kdsuite.rollout.settings import RolloutSettings
from kdsuite.rollout.sources import STATE_FILE, AdaptiveRollout
from kdsuite.run import train

pytestmark = pytest.mark.e2e


def run_settings(jsonl: Path) -> list[str]:
    return [
        "experiment=causal_smoke", f"dataset.path={jsonl}", "loss=distillm", "mapping=uniform",
        "rollout.init_threshold=0.6", "rollout.capacity=6", "rollout.max_new_tokens=5",
        "trainer.max_steps=24", "trainer.save_strategy=steps", "trainer.save_steps=4", "trainer.logging_steps=2",
        "trainer.bf16=false", "teacher.finetune.bf16=false", "teacher.finetune.max_steps=4",
        "dataset.generation.max_new_tokens=4", "dataset.generation.n_seeds=1", "dataset.generation.log_examples=1",
    ]


def in_process(make_config, settings, tmp_path, folder, *extra):
    cfg = make_config(*settings, f"cache_dir={tmp_path / 'cache'}", *extra)
    with open_dict(cfg):
        del cfg.dataset["data_dir"]  # make_config adds it for GLUE; the subprocess has none
        cfg.output_dir = str(folder)
        cfg.tracking.uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    return cfg


def history(client, run_id, name):
    return [(point.step, point.value) for point in client.get_metric_history(run_id, name)]


@pytest.mark.slow(seconds=90)
def test_sigterm_then_resume_continues_the_adaptive_schedule(tmp_path, make_config, dolly_jsonl, one_thread):
    settings = run_settings(dolly_jsonl)
    (tmp_path / "work").mkdir()
    reference = make_config(*settings, f"cache_dir={tmp_path / 'cache'}")  # fine-tunes the cached teacher
    with open_dict(reference):
        reference.output_dir = str(tmp_path / "reference")
    train(reference)
    client = mlflow.MlflowClient(reference.tracking.uri)
    [uninterrupted] = client.search_runs([client.get_experiment_by_name("kdsuite").experiment_id],
                                         "tags.role = 'student'")

    folder = tmp_path / "killed"
    command = run_py(*settings, f"cache_dir={tmp_path / 'cache'}", f"output_dir={folder}",
                     f"tracking.uri=sqlite:///{tmp_path / 'work' / 'mlflow.db'}", f"hydra.run.dir={tmp_path / 'hydra'}")
    stderr = kill_at_first_checkpoint(command, tmp_path / "work", folder, "trainer/checkpoint-*")
    checkpoints = by_step(folder.glob("trainer/checkpoint-*"))
    newest = checkpoints[-1]
    assert int(newest.name.split("-")[1]) < 24, stderr[-2000:]
    saved = torch.load(newest / STATE_FILE, weights_only=False)
    assert saved["schedule"]["previous_loss"] is not None and len(saved["buffer"]["examples"]) > 0

    resumed_cfg = in_process(make_config, settings, tmp_path, folder, "resume=true")
    train(resumed_cfg)
    work_client = mlflow.MlflowClient(resumed_cfg.tracking.uri)
    [resumed] = work_client.search_runs([work_client.get_experiment_by_name("kdsuite").experiment_id],
                                        "tags.role = 'student'")
    assert resumed.info.status == "FINISHED"
    for metric in ("rollout/threshold", "rollout/buffer_size", "rollout/validation_loss", "train/kd"):
        assert history(work_client, resumed.info.run_id, metric)[-3:] == pytest.approx(
            history(client, uninterrupted.info.run_id, metric)[-3:], abs=1e-6), metric
    assert resumed.data.metrics["final/loss"] == pytest.approx(uninterrupted.data.metrics["final/loss"], abs=1e-6)


def test_a_checkpoint_without_the_rollout_state_is_refused_naming_the_file(tmp_path):
    source = AdaptiveRollout(RolloutSettings(source="adaptive"), 0, 2, seed=0)
    checkpoint = tmp_path / "checkpoint-8"
    checkpoint.mkdir()
    with pytest.raises(FileNotFoundError, match="checkpoint-8/rollout_state.pt is missing"):
        load_state(source, checkpoint, rank=0)
    with pytest.raises(FileNotFoundError, match="rollout_state_1.pt is missing"):
        load_state(source, checkpoint, rank=1)
