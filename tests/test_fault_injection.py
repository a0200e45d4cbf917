"""Fault injection: each way a run could hand back a result that is not its own, or fail late and
unnamed (issue "No silent wrong results"), reproduced on tiny models and asserted to give the
clear, early error or the safe fallback. Runs are in-process through `train` where they can be;
the SIGTERM of a teacher fine-tune and the sweeps are real processes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import REPO, TINY_RUN
from omegaconf import OmegaConf, open_dict
from safetensors.torch import save_file
from sweep_runs import children_of, mlflow_runs, sweep, sweep_env, sweep_parents

from kdsuite.config_checks import MIN_SEQ_LENGTH
from kdsuite.data import glue
from kdsuite.data.run_data import data_digests
from kdsuite.run import train
from kdsuite.run.run_folder import (
    IDENTITY_FILE,
    CheckpointsInTheWay,
    FolderOfAnotherRun,
    NoCompleteCheckpoint,
    missing_parts,
    run_identity,
)
from kdsuite.stores.check import check_store
from kdsuite.teacher.cache import cache_entry, get_or_finetune
from kdsuite.tracks import get_task

CHECKPOINTED = [*TINY_RUN, "trainer.save_strategy=steps", "trainer.save_steps=2", "trainer.logging_steps=2"]


def student_runs(cfg):
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return client, []
    return client, client.search_runs([experiment.experiment_id], "tags.role = 'student'")


def with_settings(cfg, **values):
    """`cfg` with dotted keys set (values the command line cannot give, such as a test's paths)."""
    with open_dict(cfg):
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


@pytest.fixture
def finished_kd(make_config, glue_dir):
    """A finished kd run with checkpoints at steps 2 and 4 in an explicit output_dir."""
    cfg = make_config(*CHECKPOINTED, "loss=kd")
    train(cfg)
    return cfg


# -- 1. a run folder knows whose it is ----------------------------------------------------------
@pytest.mark.slow(seconds=15)
def test_explicit_output_dir_is_refused_to_another_config_finished_or_killed(finished_kd, make_config):
    folder = Path(finished_kd.output_dir)
    assert (folder / IDENTITY_FILE).is_file()
    def in_folder(*overrides):
        return with_settings(make_config(*overrides), output_dir=str(folder))

    other = in_folder(*CHECKPOINTED, "loss=ce", "trainer.learning_rate=0.01", "resume=true")

    # finished: the "finished already" shortcut must not hand the kd metric to a ce config
    with pytest.raises(FolderOfAnotherRun) as refused:
        train(other)
    message = str(refused.value)
    assert "loss._target_" in message and "trainer.learning_rate" in message and str(folder) in message
    # without resume the refusal is the same, not "checkpoints of this exact run"
    plain = in_folder(*CHECKPOINTED, "loss=ce", "trainer.learning_rate=0.01")
    with pytest.raises(FolderOfAnotherRun):
        train(plain)

    # killed: the same folder with the run left KILLED is not continued by the ce config either
    client, [kd_run] = student_runs(finished_kd)
    client.set_terminated(kd_run.info.run_id, status="KILLED")
    with pytest.raises(FolderOfAnotherRun, match="loss._target_"):
        train(other)
    client, runs = student_runs(finished_kd)
    assert len(runs) == 1 and runs[0].data.params["loss._target_"].endswith("KDLoss")  # nothing was added

    # the kd config itself still resumes (the identity matches), also with save_student toggled on: it is
    # not part of the identity, so the killed run's own folder and checkpoints are found
    same = in_folder(*CHECKPOINTED, "loss=kd", "resume=true")
    with pytest.raises(CheckpointsInTheWay):
        train(in_folder(*CHECKPOINTED, "loss=kd"))
    assert train(in_folder(*CHECKPOINTED, "loss=kd", "resume=true", "save_student=true")) == pytest.approx(
        kd_run.data.metrics["final_metric"])
    assert (folder / "student" / "config.json").is_file()
    client, [resumed] = student_runs(finished_kd)
    assert resumed.info.run_id == kd_run.info.run_id and resumed.info.status == "FINISHED"

    # a finished run asked to save a student it did not save does not answer with its metric
    shutil.rmtree(folder / "student")
    with pytest.raises(ValueError, match="save_student=true, but the finished run .* saved no student"):
        train(in_folder(*CHECKPOINTED, "loss=kd", "resume=true", "save_student=true"))
    assert train(same) == pytest.approx(kd_run.data.metrics["final_metric"])  # without it, the shortcut answers

    # a folder from before identities were recorded: refused under an explicit output_dir, saying why
    (folder / IDENTITY_FILE).unlink()
    with pytest.raises(FolderOfAnotherRun, match=f"no {IDENTITY_FILE}"):
        train(same)


# -- 2. a checkpoint is complete or it is not used -----------------------------------------------
@pytest.mark.slow(seconds=12)
def test_incomplete_checkpoint_falls_back_to_the_newest_complete_one(finished_kd, make_config, caplog):
    folder = Path(finished_kd.output_dir) / "trainer"
    client, [kd_run] = student_runs(finished_kd)
    client.set_terminated(kd_run.info.run_id, status="KILLED")  # as a kill after step 4 leaves it
    (folder / "checkpoint-4" / "optimizer.pt").unlink()
    resumed = with_settings(make_config(*CHECKPOINTED, "loss=kd", "resume=true"), output_dir=finished_kd.output_dir)
    with caplog.at_level(logging.WARNING, logger="kdsuite.run.run_folder"):
        train(resumed)
    assert "checkpoint-4 (missing optimizer.pt)" in caplog.text
    client, [run] = student_runs(finished_kd)
    assert run.info.run_id == kd_run.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_step"] == "2"

    # with no complete checkpoint left, the run stops and names the folder
    client.set_terminated(kd_run.info.run_id, status="KILLED")
    for checkpoint in folder.glob("checkpoint-*"):
        (checkpoint / "trainer_state.json").unlink(missing_ok=True)
    with pytest.raises(NoCompleteCheckpoint, match=str(folder)):
        train(resumed)


def test_missing_parts_names_what_a_checkpoint_lacks(tmp_path):
    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    assert set(missing_parts(checkpoint)) == {"trainer_state.json", "optimizer.pt", "scheduler.pt",
                                               "model weights (model.safetensors)", "rng_state.pth"}
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (checkpoint / name).write_text("x")
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.ones(64)}, str(checkpoint / "model.safetensors"))
    assert missing_parts(checkpoint) == []
    assert missing_parts(checkpoint, extra_files=("rollout_state.pt",)) == ["rollout_state.pt"]
    assert missing_parts(checkpoint, world_size=2) == [
        "rng_state_0.pth, rng_state_1.pth (it holds rng_state.pth: saved by a run on another number of processes)"]
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # cut short
    [problem] = missing_parts(checkpoint)
    assert problem.startswith("model.safetensors truncated")
    weights.unlink()  # a sharded checkpoint whose index lists a shard that is not there
    save_file({"weight": torch.ones(64)}, str(checkpoint / "model-00001-of-00002.safetensors"))
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    assert missing_parts(checkpoint) == ["shard model-00002-of-00002.safetensors missing"]


# -- 3. caches and identities are keyed by the rows, not the folder ------------------------------
def copy_task(glue_dir: Path, destination: Path, task_dir: str = "RTE") -> Path:
    shutil.copytree(glue_dir / task_dir, destination / task_dir)
    return destination


def flip_rte_labels(data_dir: Path) -> None:
    for name in ("train.tsv", "dev.tsv"):
        path = data_dir / "RTE" / name
        lines = path.read_text().splitlines(keepends=True)
        flipped = [lines[0]] + [line.replace("\tnot_entailment", "\tTMP").replace("\tentailment", "\tnot_entailment")
                                .replace("\tTMP", "\tentailment") for line in lines[1:]]
        path.write_text("".join(flipped))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a new mtime even within a tick


def test_teacher_cache_and_run_identity_follow_the_rows(make_config, glue_dir, tmp_path):
    task = get_task("rte")
    first = copy_task(glue_dir, tmp_path / "glue_a")
    moved = copy_task(glue_dir, tmp_path / "glue_b")
    cfg_a = with_settings(make_config(*TINY_RUN), **{"dataset.data_dir": str(first)})
    cfg_b = with_settings(make_config(*TINY_RUN), **{"dataset.data_dir": str(moved)})
    # a copy elsewhere is the same data: same teacher, same run identity
    assert cache_entry(cfg_a).path == cache_entry(cfg_b).path
    assert run_identity(cfg_a, data_digests(cfg_a, task)).hash == run_identity(cfg_b, data_digests(cfg_b, task)).hash
    before = cache_entry(cfg_a)
    identity_before = run_identity(cfg_a, data_digests(cfg_a, task))
    # two processes train with twice the effective batch: another run, with another folder
    assert run_identity(cfg_a, data_digests(cfg_a, task), world_size=2).hash != identity_before.hash
    flip_rte_labels(first)  # an edit in place
    after = cache_entry(cfg_a)
    identity_after = run_identity(cfg_a, data_digests(cfg_a, task))
    assert after.path != before.path and after.key["dataset"]["rows_sha256"] != before.key["dataset"]["rows_sha256"]
    assert identity_after.hash != identity_before.hash
    assert "source" in after.key["dataset"] and str(first) not in str(after.key)


@pytest.mark.slow(seconds=12)
def test_edited_data_is_not_answered_by_the_old_finished_run(make_config, glue_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run folders (outputs/runs/<identity>) land here
    data_dir = copy_task(glue_dir, tmp_path / "glue_edit")
    cfg = with_settings(make_config(*TINY_RUN, "loss=kd"), **{"dataset.data_dir": str(data_dir), "output_dir": None})
    train(cfg)
    from kdsuite.run.job import finished_already

    resumed = with_settings(make_config(*TINY_RUN, "loss=kd", "resume=true"),
                            **{"dataset.data_dir": str(data_dir), "output_dir": None})
    assert finished_already(resumed) is not None  # unchanged data: the finished run answers
    flip_rte_labels(data_dir)
    assert finished_already(resumed) is None  # edited data: a new identity, a new folder, nothing finished


# -- 4. data errors name the file and line -------------------------------------------------------
@pytest.mark.parametrize("damage, expected", [
    (lambda text: text.rsplit("\t", 2)[0], r"dev\.tsv:\d+: 2 tab-separated column\(s\)"),  # truncated last line
    (lambda text: text.replace("\tentailment\n", "\n", 1), r"dev\.tsv:\d+: 3 tab-separated column\(s\)"),
    (lambda text: text.splitlines(keepends=True)[0], r"dev\.tsv: no data rows after the header"),
])
def test_malformed_glue_rows_are_named_by_file_and_line(glue_dir, tmp_path, damage, expected):
    data_dir = copy_task(glue_dir, tmp_path)
    path = data_dir / "RTE" / "dev.tsv"
    path.write_text(damage(path.read_text()))
    with pytest.raises(ValueError, match=expected):
        glue.load_split(get_task("rte"), "validation", data_dir)


# -- 5 and 10. tracking stores fail fast and by name ----------------------------------------------
def test_unreachable_tracking_server_is_named(make_config, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = with_settings(make_config(*TINY_RUN), **{"tracking.uri": "http://127.0.0.1:9/"})
    with pytest.raises(ValueError, match=r"tracking.uri='http://127.0.0.1:9/': the tracking server did not answer"):
        train(cfg)


def test_a_server_that_is_not_mlflow_is_named_as_answering_with_an_error(monkeypatch):
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # 501 to every GET
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{server.server_port}/"
    try:
        with pytest.raises(ValueError, match=rf"tracking.uri='{uri}': the server answered, with an error"):
            check_store(uri)
    finally:
        server.shutdown()


def test_sqlite_store_in_a_missing_folder_or_under_a_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"tracking.uri=.*the folder .*nonexistent_dir does not exist"):
        check_store(f"sqlite:///{tmp_path / 'nonexistent_dir' / 'x.db'}")
    assert not (tmp_path / "nonexistent_dir").exists()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"tracking.uri=.*a_file is a file, not a folder"):
        check_store(f"sqlite:///{tmp_path / 'a_file' / 'x.db'}")
    check_store(f"sqlite:///{tmp_path / 'x.db'}")  # a new store in an existing folder is fine
    with pytest.raises(ValueError, match=r"tracking.uri='sqlite:///~/x.db': MLflow does not expand ~"):
        check_store("sqlite:///~/x.db")


# -- 6 and 7. every setting checked before work, by name -----------------------------------------
@pytest.mark.parametrize("override, expected", [
    ("seed=abc", r"seed='abc' is not an integer"),
    ("trainer.learning_rate=-1", r"trainer.learning_rate=-1.* must be >= 0"),
    ("trainer.per_device_train_batch_size=0", r"trainer.per_device_train_batch_size=0 must be >= 1"),
    ("teacher.finetune.per_device_train_batch_size=0", r"teacher.finetune.per_device_train_batch_size=0 must be >= 1"),
    ("loss.alpha=high", r"loss.alpha='high' is not a number"),
    ("+loss.alpah=0.3", r"loss.alpah is not a setting of kdsuite.losses.kd.KDLoss"),
    ("dataset.max_train_samples=-5", r"dataset.max_train_samples=-5 must be >= 1 or null"),
    ("dataset.max_seq_length=3", rf"dataset.max_seq_length=3 must be >= {MIN_SEQ_LENGTH}"),
    ("trainer.max_steps=0", r"trainer.max_steps=0 must be >= 1, or -1"),
    ("loss=minilm loss.teacher_layer=abc", r"loss.teacher_layer='abc' is not an integer"),  # an `int | None` setting
])
def test_bad_settings_are_named_before_any_work(make_config, override, expected):
    cfg = make_config(*TINY_RUN, *override.split())
    with pytest.raises(ValueError, match=expected):
        train(cfg)
    assert not Path(cfg.cache_dir).exists()  # no teacher was fine-tuned
    assert not Path(cfg.tracking.uri.removeprefix("sqlite:///")).exists()  # and the store was not touched


def test_codir_warns_of_more_negatives_than_the_training_set_holds(make_config, caplog):
    from kdsuite.run.assembly import build_run

    cfg = make_config(*TINY_RUN, "loss=codir", "loss.num_negatives=100000")
    with caplog.at_level(logging.WARNING, logger="kdsuite.losses.codir"):
        build_run(cfg)
    assert "loss.num_negatives=100000" in caplog.text and "repeat" in caplog.text


# -- 8. every failed sweep trial is visible -------------------------------------------------------
@pytest.mark.slow(seconds=45)
def test_sweep_failures_are_visible_in_mlflow_and_trials_csv(tmp_path, glue_dir):
    # a trial whose sampled value fails the loss's check: a FAILED child with its error
    sweep(tmp_path, glue_dir, "hydra/sweeper=kdsuite_optuna", "loss=kd", "loss.alpha=interval(1.5,2.5)",
          "hydra.sweeper.n_trials=1", check=False)
    client, runs = mlflow_runs(tmp_path)
    [parent] = sweep_parents(runs)
    [child] = children_of(runs, parent)
    assert child.info.status == "FAILED" and "loss.alpha=" in child.data.tags["error"]
    [table] = (tmp_path / "multirun").glob("**/optuna/trials.csv")
    assert "loss.alpha=" in table.read_text()

    # a shared setting that every trial would fail on: the parent FAILED, naming it, no child
    shared = tmp_path / "shared"
    shared.mkdir()
    result = sweep(shared, glue_dir, "hydra/sweeper=kdsuite_optuna", "loss=kd", "dataset.max_train_samples=0",
                   "loss.alpha=interval(0.1,0.9)", "hydra.sweeper.n_trials=1", check=False)
    assert result.returncode != 0 and "dataset.max_train_samples=0" in result.stderr
    client, runs = mlflow_runs(shared)
    [parent] = sweep_parents(runs)
    assert parent.info.status == "FAILED" and "dataset.max_train_samples=0" in parent.data.tags["error"]
    assert children_of(runs, parent) == []


# -- 9. the teacher cache: damaged entries are rebuilt, killed fine-tunes cleaned up --------------
@pytest.mark.slow(seconds=12)
def test_truncated_cached_teacher_is_rebuilt_with_a_warning(make_config, caplog):
    cfg = make_config(*TINY_RUN, "loss=kd")
    train(cfg)
    entry = cache_entry(cfg)
    weights = entry.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    again = make_config(*TINY_RUN, "loss=kd", "seed=43")
    with caplog.at_level(logging.WARNING, logger="kdsuite.teacher.cache"):
        train(again)
    assert f"cached teacher {entry.path} cannot be used (model.safetensors" in caplog.text
    assert len(list(entry.path.parent.glob(f"{entry.path.name}.damaged-*"))) == 1  # kept aside, not deleted
    client = mlflow.MlflowClient(cfg.tracking.uri)
    teachers = client.search_runs([client.get_experiment_by_name("kdsuite").experiment_id], "tags.role = 'teacher'")
    assert len(teachers) == 2  # fine-tuned again
    assert (entry.path / "model.safetensors").stat().st_size > 100


@pytest.mark.slow(seconds=25)
def test_sigterm_during_teacher_finetune_leaves_partial_that_the_next_build_removes(tmp_path, glue_dir, caplog):
    command = [sys.executable, str(REPO / "run.py"), *TINY_RUN, "teacher.finetune.max_steps=100000",
               "teacher.finetune.save_strategy=no", f"dataset.data_dir={glue_dir}", f"cache_dir={tmp_path / 'cache'}",
               f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    process = subprocess.Popen(command, cwd=tmp_path, env=sweep_env(OMP_NUM_THREADS="1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    teachers = tmp_path / "cache" / "teachers"
    deadline = time.time() + 120
    while time.time() < deadline and not list(teachers.glob("*.partial/trainer")):
        time.sleep(0.5)
    time.sleep(1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) != 0
    [partial] = list(teachers.glob("*.partial"))
    entry_path = partial.with_name(partial.name.removesuffix(".partial"))
    assert not entry_path.exists()

    class Finetuned:  # the next build: what it is handed is checked, not trained (the cache's own code runs)
        def save_pretrained(self, folder):
            (Path(folder) / "config.json").write_text("{}")
            save_file({"weight": torch.zeros(1)}, str(Path(folder) / "model.safetensors"))

        @classmethod
        def from_pretrained(cls, folder):  # the cache returns the teacher loaded back from the entry
            return cls()

    seen = {}

    def finetune(trainer_dir):
        seen["partial_was_removed"] = not trainer_dir.parent.exists()
        trainer_dir.mkdir(parents=True)  # as the Trainer would
        return Finetuned(), Finetuned(), {"accuracy": 0.5}, None

    from kdsuite.teacher.cache import CacheEntry

    with caplog.at_level(logging.WARNING, logger="kdsuite.teacher.cache"):
        teacher = get_or_finetune(CacheEntry({"key": 1}, entry_path), Finetuned, finetune)
    assert seen["partial_was_removed"] and f"removing {partial}" in caplog.text
    assert entry_path.is_dir() and not partial.exists()
    assert isinstance(teacher.model, Finetuned) and teacher.metrics == {"accuracy": 0.5} and not teacher.from_cache
