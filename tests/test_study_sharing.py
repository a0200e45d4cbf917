"""Several processes on one Optuna study, without training: a new SQLite storage created by
processes started together, per-trial sampler seeds (no worker repeats another's parameters, a
resumed study draws new ones, one process stays reproducible), the experiment hash that names a
study, and the check that parallel trials get a parallel launcher."""

from types import SimpleNamespace

import optuna
import pytest
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from study_workers import SAMPLERS, ask_worker, create_storage_worker, open_shared_study, run_workers

from hydra_plugins.kdsuite_optuna_sweeper.study_identity import identify
from hydra_plugins.kdsuite_optuna_sweeper.sweeper import KdsuiteOptunaSweeper
from kdsuite.stores.lock import sqlite_path


def test_sqlite_url_to_path():
    assert str(sqlite_path("sqlite:///optuna.db")) == "optuna.db"
    assert str(sqlite_path("sqlite:////tmp/x/optuna.db?timeout=5")) == "/tmp/x/optuna.db"
    assert sqlite_path("sqlite://") is None and sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql+psycopg://u@host/db") is None


@pytest.mark.slow(seconds=20)
def test_new_sqlite_storage_opened_by_processes_started_together(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'optuna.db'}"
    run_workers(create_storage_worker, [(url,)] * 4, 4)
    assert optuna.get_all_study_names(url) == ["shared"]


@pytest.mark.slow(seconds=10)
def test_concurrent_workers_never_repeat_parameters(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    run_workers(ask_worker, [(url, 2)] * 2, 2)
    for sampler in SAMPLERS:  # TPE, random, grid and brute force, each on 4 points here
        trials = optuna.load_study(study_name=sampler, storage=url).trials
        assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert len({tuple(sorted(t.params.items())) for t in trials}) == 4, (sampler, [t.params for t in trials])


def test_resumed_study_draws_new_parameters_and_one_process_is_reproducible(tmp_path):
    spec, space = SAMPLERS["tpe"]

    def first_trials(url: str, resumes: int) -> list[dict]:
        for _ in range(resumes):  # a fresh process each time: a fresh sampler on the stored study
            study = open_shared_study(url, spec)
            trial = study.ask(space)
            study.tell(trial, 1.0)
        return [t.params for t in optuna.load_study(study_name="shared", storage=url).trials]

    resumed = first_trials(f"sqlite:///{tmp_path / 'a.db'}", 3)
    assert len({tuple(sorted(params.items())) for params in resumed}) == 3
    assert first_trials(f"sqlite:///{tmp_path / 'b.db'}", 3) == resumed  # same seed, same study


def compose_run(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["sweep=kd_weights", *overrides])


def test_study_identity_hashes_the_experiment_and_nothing_else():
    swept = ["loss.alpha", "loss.temperature"]
    base = identify(compose_run(), swept, "kd_weights")
    assert base.default_name == f"kd_weights_rte_bert2l_{base.hash}" and len(base.hash) == 10
    same = ["tracking.uri=sqlite:///elsewhere.db", "cache_dir=/tmp/c", "output_dir=/tmp/o",
            "dataset.data_dir=/data/glue", "loss.alpha=0.3", "+tracking.tags.note=x",
            "optuna.trial_id=7"]
    for override in same:
        assert identify(compose_run(override), swept, "kd_weights").hash == base.hash, override
    for override in ["trainer.learning_rate=3e-3", "seed=1", "teacher=tiny", "dataset.max_train_samples=64"]:
        assert identify(compose_run(override), swept, "kd_weights").hash != base.hash, override
    other = identify(compose_run("dataset=mrpc", "student=bert4l"), swept, None)
    assert other.default_name.startswith("sweep_mrpc_bert4l_")
    assert "alpha" not in base.hashed_config["loss"] and "tracking" not in base.hashed_config


def test_parallel_trials_need_a_parallel_launcher():
    sweeper = KdsuiteOptunaSweeper(None, None, "maximize", 2, 2, SAMPLERS["tpe"][0], None, {})
    config = OmegaConf.create({"hydra": {"launcher": {
        "_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}}})
    with pytest.raises(ValueError, match=r"n_jobs=2 .* hydra/launcher=processes"):
        sweeper.setup(hydra_context=SimpleNamespace(config_loader=None), task_function=None, config=config)
    with pytest.raises(ValueError, match="n_jobs=0"):
        KdsuiteOptunaSweeper(None, None, "maximize", 2, 0, SAMPLERS["tpe"][0], None, {})
