"""Workers on one shared Optuna study, as real processes (spawned: each builds its own sampler
and storage, as a sweep worker does). Light imports only, so that they start fast."""

import multiprocessing

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from hydra_plugins.kdsuite_optuna_sweeper.sampling import TrialSeededSampler
from kdsuite.stores.lock import database_lock
from kdsuite.stores.optuna_trial import open_storage

CONTINUOUS = {"a": FloatDistribution(0.0, 1.0), "b": FloatDistribution(0.1, 10.0, log=True)}
FOUR_POINTS = {"a": CategoricalDistribution([1, 2]), "b": CategoricalDistribution(["x", "y"])}
SAMPLERS = {
    "tpe": ({"_target_": "optuna.samplers.TPESampler", "seed": 0}, CONTINUOUS),
    "random": ({"_target_": "optuna.samplers.RandomSampler", "seed": 0}, CONTINUOUS),
    "grid": ({"_target_": "optuna.samplers.GridSampler", "search_space": {"a": [1, 2], "b": ["x", "y"]},
              "seed": 0}, FOUR_POINTS),
    "brute_force": ({"_target_": "optuna.samplers.BruteForceSampler", "seed": 0}, FOUR_POINTS),
}


def open_shared_study(url: str, spec: dict, name: str = "shared") -> optuna.Study:
    storage = open_storage(url)
    with database_lock(url, name):
        return optuna.create_study(study_name=name, storage=storage, sampler=TrialSeededSampler(spec),
                                   direction="maximize", load_if_exists=True)


def create_storage_worker(url: str, barrier) -> None:
    barrier.wait()
    optuna.create_study(study_name="shared", storage=open_storage(url), load_if_exists=True)


def ask_worker(url: str, rounds: int, barrier) -> None:
    """For each sampler of SAMPLERS, on a study named after it, each round: ask a trial (under the
    study lock, as the sweeper does), wait until every worker holds a RUNNING trial, finish it."""
    for name, (spec, space) in SAMPLERS.items():
        study = open_shared_study(url, spec, name)
        for _ in range(rounds):
            ask_and_tell_together(url, study, space, barrier)


def ask_and_tell_together(url: str, study: optuna.Study, space: dict, barrier) -> None:
    with database_lock(url, study.study_name):
        trial = study.ask(space)
    barrier.wait()
    try:
        study.tell(trial, float(trial.number))
    except RuntimeError as error:  # grid/brute force exhausted: they ask the study to stop
        if "Study.stop" not in str(error):
            raise


def run_workers(target, args_per_worker, barrier_parties: int) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(barrier_parties)
    workers = [context.Process(target=target, args=(*args, barrier)) for args in args_per_worker]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0] * len(workers)
