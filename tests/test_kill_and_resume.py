"""A real `run.py` process killed with SIGTERM after its first checkpoint, then resumed: the MLflow
run says KILLED and why, a plain re-run refuses to overwrite the checkpoints, and `resume=true`
finishes the same MLflow run with the metric of an uninterrupted run (dropout and data order are
restored from the checkpoint). Only the killed run is a subprocess; the others run in-process,
single-threaded like it, to keep the test short."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pytest
from killed_runs import by_step, kill_at_first_checkpoint, run_py
from omegaconf import open_dict

from kdsuite.run import train
from kdsuite.run.run_folder import CheckpointsInTheWay

pytestmark = pytest.mark.e2e

# A tiny teacher with dropout (BERT's default 0.1) and enough steps that the kill lands mid-training.
RUN = [
    "experiment=smoke", "loss=kd", "trainer.max_steps=60", "trainer.save_strategy=steps",
    "trainer.save_steps=5", "trainer.logging_steps=50", "trainer.eval_strategy=no",
    "trainer.per_device_train_batch_size=8", "trainer.bf16=false", "teacher.finetune.bf16=false",
]


def command(tmp_path: Path, glue_dir: Path, teacher_cache: Path, *extra: str) -> list[str]:
    return run_py(*RUN, f"dataset.data_dir={glue_dir}", f"cache_dir={teacher_cache}",
                  f"hydra.run.dir={tmp_path / 'hydra'}", *extra)


def student_runs(uri: str):
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("kdsuite")
    found = client.search_runs([experiment.experiment_id], "tags.role = 'student'")
    return client, found


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory) -> Path:
    """One teacher cache for the module's runs: they share the tiny teacher, fine-tuned once per
    worker. These tests are about the student's run folder and MLflow run; the cache itself is
    tested in test_end_to_end and test_fault_injection."""
    return tmp_path_factory.mktemp("teacher_cache")


def in_process(make_config, teacher_cache, tmp_path, *extra):
    cfg = make_config(*RUN, f"cache_dir={teacher_cache}", *extra)
    with open_dict(cfg):
        cfg.output_dir = None  # the default run folder, outputs/runs/<hash> under the working folder
        cfg.tracking.uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    return cfg


@pytest.mark.slow(seconds=20)
def test_sigterm_ends_killed_and_resume_matches_an_uninterrupted_run(
    tmp_path, glue_dir, make_config, monkeypatch, one_thread, teacher_cache
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    uri = f"sqlite:///{work / 'mlflow.db'}"

    reference_cfg = make_config(*RUN, f"cache_dir={teacher_cache}")  # its own output_dir and store
    train(reference_cfg)
    _, [uninterrupted] = student_runs(reference_cfg.tracking.uri)

    # A real run.py killed after its first checkpoint: KILLED, with the signal named and the traceback kept.
    runs_dir = work / "outputs" / "runs"
    stderr = kill_at_first_checkpoint(command(tmp_path, glue_dir, teacher_cache), work, runs_dir,
                                      "*/trainer/checkpoint-*")
    client, [killed] = student_runs(uri)
    assert killed.info.status == "KILLED", stderr[-3000:]
    assert killed.data.tags["error"] == "killed by SIGTERM"
    assert "RunKilled" in Path(client.download_artifacts(killed.info.run_id, "traceback.txt")).read_text()
    [folder] = runs_dir.iterdir()
    checkpoints = by_step(folder.glob("trainer/checkpoint-*"))
    assert 1 <= len(checkpoints) <= 2  # save_total_limit=2 keeps the newest
    assert int(checkpoints[-1].name.split("-")[1]) < 60
    assert all((checkpoint / "trainer_state.json").is_file() for checkpoint in checkpoints)

    # The same run again refuses to overwrite them, before any work.
    with pytest.raises(CheckpointsInTheWay, match="resume=true"):
        train(in_process(make_config, teacher_cache, tmp_path))
    assert len(student_runs(uri)[1]) == 1

    # resume=true continues the same MLflow run to the uninterrupted run's result.
    train(in_process(make_config, teacher_cache, tmp_path, "resume=true"))
    _, [finished] = student_runs(uri)
    assert finished.info.run_id == killed.info.run_id and finished.info.status == "FINISHED"
    assert finished.data.tags["resumed_from_step"] == checkpoints[-1].name.split("-")[1]
    assert "error" not in finished.data.tags
    for metric in ("final/loss", "final_metric"):
        assert finished.data.metrics[metric] == pytest.approx(uninterrupted.data.metrics[metric], abs=1e-6)


def test_resume_with_nothing_to_resume_starts_fresh(tmp_path, glue_dir, make_config, monkeypatch, caplog,
                                                    teacher_cache):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    with caplog.at_level(logging.INFO, logger="kdsuite.run.job"):
        train(in_process(make_config, teacher_cache, tmp_path, "resume=true", "trainer.max_steps=4",
                         "trainer.save_strategy=no"))
    assert "holds no checkpoint: starting fresh" in caplog.text
    assert "kd-bert2l-rte-s42: dev accuracy" in caplog.text  # the closing summary line
    _, [run] = student_runs(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    assert run.info.status == "FINISHED" and "resumed_from_step" not in run.data.tags


def test_resume_of_a_finished_run_returns_its_metric_and_trains_nothing(
    tmp_path, glue_dir, make_config, monkeypatch, caplog, teacher_cache
):
    """What makes a re-run Hydra multirun grid (`resume=true`) run only its unfinished points."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    settings = ("resume=true", "trainer.max_steps=4", "trainer.save_strategy=no")
    objective = train(in_process(make_config, teacher_cache, tmp_path, *settings))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("kdsuite.run.job.train_student", no_training)
    monkeypatch.setattr("kdsuite.run.job.prepare_teacher", no_training)
    with caplog.at_level(logging.INFO, logger="kdsuite.run.job"):
        assert train(in_process(make_config, teacher_cache, tmp_path, *settings)) == objective
    assert "finished already" in caplog.text
    _, runs = student_runs(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    assert len(runs) == 1

    # The same config in another experiment (a recipe check and a grid share run folders) is a
    # run of its own there, and does not make the first experiment's run train again.
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    other = in_process(make_config, teacher_cache, tmp_path, *settings, "tracking.experiment=grid")
    train(other)
    client = mlflow.MlflowClient(uri)
    [in_grid] = client.search_runs([client.get_experiment_by_name("grid").experiment_id])
    assert in_grid.info.status == "FINISHED"
    monkeypatch.setattr("kdsuite.run.job.build_run", no_training)
    for cfg in (in_process(make_config, teacher_cache, tmp_path, *settings), other):
        assert train(cfg) == objective
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)

    # A deleted run is not a result: the point trains again. Without resume=true it always does.
    client.delete_run(runs[0].info.run_id)
    train(in_process(make_config, teacher_cache, tmp_path, *settings))
    train(in_process(make_config, teacher_cache, tmp_path, *settings[1:]))
    again = student_runs(uri)[1]
    assert len(again) == 2 and runs[0].info.run_id not in {run.info.run_id for run in again}
