"""DistiLLM's adaptive rollout on two processes (torchrun, gloo on CPU): each rank generates for its
own shard of prompts (the replay buffers saved per rank hold disjoint examples), the collective
validation loss and cost metrics do not hang, every rank writes its state file into the
checkpoint, and MLflow gets one finished run with the rollout's metrics. The teacher, cached by a
single-process run with other scoring settings, is scored again once, by a single-process child."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest
import torch
from conftest import REPO

pytestmark = pytest.mark.e2e


@pytest.mark.slow(seconds=110)
def test_each_rank_generates_for_its_own_shard_and_saves_its_state(tmp_path):
    rows = [{"instruction": f"Name thing {i}.", "context": "", "response": f"Thing {i} is here."} for i in range(24)]
    data = tmp_path / "dolly.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "run.py"),
        "experiment=causal_smoke", f"dataset.path={data}", "loss=distillm", "mapping=uniform",
        "rollout.init_threshold=1.0", "rollout.max_new_tokens=4", "+trainer.use_cpu=true",
        "+teacher.finetune.use_cpu=true", "trainer.bf16=false", "teacher.finetune.bf16=false",
        "teacher.finetune.max_steps=2", "trainer.max_steps=3", "trainer.per_device_train_batch_size=2",
        "trainer.save_strategy=steps", "trainer.save_steps=3", "trainer.logging_steps=1",
        "dataset.generation.max_new_tokens=3", "dataset.generation.n_seeds=1", "dataset.generation.log_examples=1",
        f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}", f"tracking.uri={uri}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    single = [sys.executable, *command[command.index(str(REPO / "run.py")):], "dataset.generation.n_seeds=2",
              "trainer.max_steps=1", f"output_dir={tmp_path / 'single'}"]  # caches the teacher, scored on 2 seeds
    result = subprocess.run(single, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]

    [checkpoint] = (tmp_path / "run" / "trainer").glob("checkpoint-3")
    states = [torch.load(checkpoint / name, weights_only=False) for name in ("rollout_state.pt", "rollout_state_1.pt")]
    shards = [{example[2] for example in state["buffer"]["examples"]} for state in states]
    assert all(shards) and not shards[0] & shards[1]  # both ranks generated, each for its own prompts
    assert states[0]["schedule"] == states[1]["schedule"]  # one validation loss (all-reduced), one schedule

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("kdsuite")
    _, run = client.search_runs([experiment.experiment_id], "tags.role = 'student'", order_by=["start_time"])
    assert run.info.status == "FINISHED"
    finetuned, scored = client.search_runs([experiment.experiment_id], "tags.role = 'teacher'", order_by=["start_time"])
    assert "scored_from_cache" in scored.data.tags and scored.info.status == "FINISHED"
    assert "final/rougeL_seed1" in finetuned.data.metrics and "final/rougeL_seed1" not in scored.data.metrics
    assert run.data.tags["teacher_scores_run_id"] == scored.info.run_id
    assert (tmp_path / "run" / "teacher_job.yaml").is_file()  # scored by a single-process child, not by a rank
    assert run.data.metrics["teacher/loss"] == scored.data.metrics["final/loss"]
    assert [p.step for p in client.get_metric_history(run.info.run_id, "rollout/seconds_per_step")] == [1, 2, 3]
    assert "rollout/validation_loss" in run.data.metrics
