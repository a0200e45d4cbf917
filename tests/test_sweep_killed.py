"""A sweep killed outright (SIGKILL of its process group) leaves its trial RUNNING in Optuna; the
next invocation fails it once its heartbeats have stopped, so `max_trials` tops the study up to
its full size instead of counting the dead trial as held."""

import os
import signal
import subprocess
import time

import optuna
import pytest
from sweep_runs import finish, start_sweep, sweep_command, sweep_env

SWEEP = [
    "hydra/sweeper=kdsuite_optuna", "loss=kd", "loss._target_=probe_losses.ProbeKDLoss",
    "loss.alpha=interval(0.1, 0.9)", "hydra.sweeper.study_name=killed",
    "hydra.sweeper.n_trials=2", "hydra.sweeper.max_trials=2", "hydra.sweeper.heartbeat_interval=1",
]


def trial_states(tmp_path) -> list[str]:
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    return sorted(trial.state.name for trial in study.trials)


@pytest.mark.slow(seconds=35)
def test_a_killed_sweeps_running_trial_is_failed_and_the_study_topped_up(tmp_path, glue_dir):
    probe = tmp_path / "probe.jsonl"
    # The first trial stalls in its first training step (ProbeKDLoss waits for 99 trials) ...
    env = sweep_env(KDSUITE_PROBE_FILE=str(probe), KDSUITE_PROBE_TOGETHER="99")
    process = subprocess.Popen(sweep_command(tmp_path, glue_dir, *SWEEP), cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not probe.exists():
        assert process.poll() is None and time.time() < deadline, "the trial never reached its first step"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # ... and the sweep dies with it, telling no one
    process.wait()
    assert trial_states(tmp_path) == ["RUNNING"]

    time.sleep(5)  # past the grace period: 4 heartbeat intervals of 1 s
    output = finish(start_sweep(tmp_path, glue_dir, *SWEEP, env=sweep_env(
        KDSUITE_PROBE_FILE=str(probe), KDSUITE_PROBE_TOGETHER="1")))
    assert "marked FAIL so they are not counted as taken" in output
    # the dead trial is FAIL, and the study holds max_trials=2 trials that did not fail
    assert trial_states(tmp_path) == ["COMPLETE", "COMPLETE", "FAIL"]
