"""One run on two processes (torchrun, gloo on CPU), checked against one process over the same
global batches: the student after a step, CoDIR's memory banks, and what lands in MLflow.

Dropout is off: its draws differ between ranks and a single process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest
import torch
from conftest import REPO, glue_path
from ddp_codir_worker import train_codir
from safetensors.torch import load_file
from transformers import set_seed

from kdsuite import models
from kdsuite.losses.base import LossContext
from kdsuite.losses.ce import CELoss
from kdsuite.run import train
from kdsuite.run.assembly import build_run, build_student, build_trainer
from kdsuite.run.job import prepare_teacher

pytestmark = pytest.mark.e2e  # starts processes and trains

NO_DROPOUT = ["+teacher.config_overrides.hidden_dropout_prob=0.0",
              "+teacher.config_overrides.attention_probs_dropout_prob=0.0"]
# On the CPU and in fp32 everywhere, GPU machine or not: the processes compare to the last bit.
SMALL_RUN = [
    "trainer.bf16=false", "teacher.finetune.bf16=false", "+trainer.use_cpu=true", "+teacher.finetune.use_cpu=true",
    "teacher=tiny", "student=bert2l", "dataset=rte", "dataset.max_train_samples=32",
    "dataset.max_eval_samples=37", "dataset.max_seq_length=32", *NO_DROPOUT,
    "teacher.finetune.max_steps=2", "teacher.finetune.per_device_train_batch_size=8",
    "teacher.finetune.eval_strategy=no", "trainer.eval_strategy=no", "trainer.per_device_eval_batch_size=8",
]
# One plain SGD step (no warmup, no clipping, no decay): the update is the gradient itself, so any
# error in how ranks and accumulated micro-batches are weighted shows in the parameters.
ONE_SGD_STEP = ["loss=kd", "trainer.max_steps=1", "trainer.logging_steps=1", "+trainer.optim=sgd",
                "trainer.learning_rate=0.5", "trainer.warmup_steps=0", "trainer.weight_decay=0.0",
                "+trainer.max_grad_norm=0", "save_student=true"]


def launch(nproc: int, script: str, *arguments: str, cwd) -> None:
    """`torchrun --standalone --nproc_per_node=<nproc> script arguments`, the code under test first
    on PYTHONPATH (then tests/, then the caller's)."""
    paths = [str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               script, *arguments]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]


def common_overrides(root) -> list[str]:
    return [f"dataset.data_dir={glue_path()}", f"cache_dir={root / 'cache'}",
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}"]


@pytest.fixture(scope="module")
def kd_on_two_processes(tmp_path_factory):
    """One torchrun kd run: 2 processes x 2 examples x 2 accumulated micro-batches, one step, a
    cold teacher cache."""
    root = tmp_path_factory.mktemp("ddp_kd")
    overrides = [*SMALL_RUN, *ONE_SGD_STEP, *common_overrides(root), "trainer.per_device_train_batch_size=2",
                 "trainer.gradient_accumulation_steps=2", f"output_dir={root / 'ddp'}",
                 f"hydra.run.dir={root / 'hydra'}"]
    launch(2, str(REPO / "run.py"), *overrides, cwd=root)
    return root


def runs(root, role):
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdsuite")
    return [run for run in client.search_runs([experiment.experiment_id]) if run.data.tags.get("role") == role]


@pytest.mark.slow(seconds=30)
@pytest.mark.xdist_group("kd_on_two_processes")  # one torchrun launch for the three
def test_two_process_run_leaves_one_global_mlflow_run(kd_on_two_processes, make_config):
    root = kd_on_two_processes
    [student_run] = runs(root, "student")
    assert student_run.info.status == "FINISHED"
    assert student_run.data.tags["world_size"] == "2"
    assert {"train/ce", "train/kd", "train/loss"} <= set(student_run.data.metrics)

    # The final metric is the saved student's on the whole dev set (37 examples, not one shard).
    cfg = make_config(*SMALL_RUN, "loss=kd")
    run = build_run(cfg)
    student = models.auto_model_class(run.task).from_pretrained(root / "ddp" / "student")
    trainer = build_trainer(run, student, CELoss(LossContext(run.task)), None, run.student_args)
    scores = trainer.evaluate(metric_key_prefix="final")
    assert len(run.data.eval_set) == 37
    assert student_run.data.metrics["final_metric"] == pytest.approx(scores["final_accuracy"], abs=1e-9)
    # The Trainer's loss is a mean of batch means, and under DDP the last batch of each rank is
    # padded with repeated examples: close to the exact mean, not equal to it.
    assert student_run.data.metrics["final/loss"] == pytest.approx(scores["final_loss"], rel=2e-3)


@pytest.mark.xdist_group("kd_on_two_processes")  # one torchrun launch for the three
def test_cold_teacher_cache_is_filled_once(kd_on_two_processes):
    [teacher_run] = runs(kd_on_two_processes, "teacher")
    assert teacher_run.info.status == "FINISHED"
    [student_run] = runs(kd_on_two_processes, "student")
    assert student_run.data.tags["teacher_run_id"] == teacher_run.info.run_id
    [entry] = [path for path in (kd_on_two_processes / "cache" / "teachers").iterdir() if path.is_dir()]
    assert not entry.name.endswith(".partial")


@pytest.mark.xdist_group("kd_on_two_processes")  # one torchrun launch for the three
def test_kd_step_on_two_processes_equals_one_process_on_the_whole_batch(kd_on_two_processes, make_config):
    root = kd_on_two_processes
    cfg = make_config(*SMALL_RUN, *ONE_SGD_STEP, "trainer.per_device_train_batch_size=8",
                      "trainer.gradient_accumulation_steps=1")
    cfg.cache_dir = str(root / "cache")
    train(cfg)  # one process, 8 examples in one batch, the teacher from the cache (own MLflow store)

    # The logged terms are global means: 4 micro-batches on 2 ranks = the one batch of 8.
    [two_process_run] = runs(root, "student")
    client = mlflow.MlflowClient(cfg.tracking.uri)
    [one_process_run] = client.search_runs([client.get_experiment_by_name("kdsuite").experiment_id])
    assert one_process_run.data.tags["teacher_run_id"] == two_process_run.data.tags["teacher_run_id"]
    for term in ("train/ce", "train/kd", "train/loss"):
        assert two_process_run.data.metrics[term] == pytest.approx(one_process_run.data.metrics[term], rel=1e-5), term

    run = build_run(cfg)
    teacher = prepare_teacher(run)
    set_seed(cfg.seed)
    before = build_student(run, teacher.model).state_dict()
    one_process = load_file(os.path.join(cfg.output_dir, "student", "model.safetensors"))
    two_processes = load_file(root / "ddp" / "student" / "model.safetensors")
    assert one_process.keys() == two_processes.keys()
    moved = max((one_process[name] - before[name]).abs().max().item() for name in one_process)
    assert moved > 1e-3  # the step did change the student
    for name, value in one_process.items():
        torch.testing.assert_close(two_processes[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow(seconds=15)
def test_codir_banks_agree_across_ranks_and_with_one_process(tmp_path):
    overrides = [*SMALL_RUN, "loss=codir", "loss.num_negatives=8", f"dataset.data_dir={glue_path()}",
                 "trainer.max_steps=3", "trainer.logging_steps=1", "trainer.warmup_steps=0",
                 "trainer.learning_rate=1e-2"]
    launch(2, str(REPO / "tests" / "ddp_codir_worker.py"), str(tmp_path / "ddp"),
           *overrides, "trainer.per_device_train_batch_size=4", cwd=tmp_path)
    train_codir(tmp_path / "single", [*overrides, "trainer.per_device_train_batch_size=8"])

    ranks = [json.loads((tmp_path / "ddp" / f"hashes-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert list(ranks[0]) == ["1", "2", "3"]
    assert ranks[0] == ranks[1]  # identical banks right after every update, not rank 0's broadcast
    assert len(set(ranks[0].values())) == 3  # and they did change at every step

    two = torch.load(tmp_path / "ddp" / "banks-rank0.pt")
    one = torch.load(tmp_path / "single" / "banks-rank0.pt")
    assert int(two["draws"]) == int(one["draws"]) == 3
    for bank in ("student_bank", "teacher_bank"):
        torch.testing.assert_close(two[bank], one[bank], rtol=1e-5, atol=1e-5, msg=bank)


def test_a_sweep_refuses_to_start_under_a_distributed_launcher(tmp_path):
    """A sweep is one process handing out trials; under torchrun it would be N sweeps."""
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path),
           "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    command = [sys.executable, str(REPO / "run.py"), "-m", "sweep=kd_weights", "experiment=smoke",
               *common_overrides(tmp_path), f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode != 0
    assert "not started under torchrun/accelerate launch (WORLD_SIZE=2)" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before any study, run or teacher
