"""Trials a killed sweep left RUNNING, failed so that later sweeps don't count them as taken.

A sweep process that dies without warning (SIGKILL, a lost machine) cannot tell Optuna how its
in-flight trials ended: they stay RUNNING, and `max_trials` counts them as held, so a re-run tops
the study up short. From asking for its trials until it has told their results, the sweeper
records an Optuna heartbeat for each of them every `heartbeat_interval` seconds
(`TrialHeartbeats`, one thread); before asking for trials it fails the RUNNING trials whose
heartbeat is older than GRACE_INTERVALS intervals (`StaleTrials`). Optuna keeps heartbeats for
`Study.optimize`; the sweeper uses the same storage methods around ask/tell.

Limits: a trial that never had a heartbeat (started before sweeps recorded them) is never taken
for stale, since it may be alive. Staleness is judged with the interval of the sweep that checks,
so every sweep working on one study should use the same `heartbeat_interval`. A re-run started
within the grace period of a kill still counts the dead trials; run it again after that.
"""

from __future__ import annotations

import logging
import threading
import warnings
from contextlib import contextmanager

import optuna

from kdsuite.private_api import optuna_trial_id

log = logging.getLogger(__name__)

# Silence for this many intervals makes a trial stale. A heartbeat write that waits out a busy
# SQLite database (SQLITE_BUSY_TIMEOUT_S, 60 s) uses up about two intervals of the default 30 s.
GRACE_INTERVALS = 4


def grace_period(heartbeat_interval: int) -> int:
    return GRACE_INTERVALS * heartbeat_interval


@contextmanager
def quiet_heartbeat_warnings():
    """Optuna marks heartbeats experimental and says they are "supposed to" go with `optimize()`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        yield


class TrialHeartbeats:
    """Records a heartbeat for each trial every interval while the block runs (context manager).
    A failed write is logged and retried at the next beat; the trial is failed only after
    GRACE_INTERVALS silent intervals."""

    def __init__(self, storage, trials: list[optuna.Trial]):
        self.storage = storage
        self.trial_ids = [optuna_trial_id(trial) for trial in trials]
        self.interval = storage.get_heartbeat_interval() if storage is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> TrialHeartbeats:
        if self.interval and self.trial_ids:
            self._beat()  # before the trials start: none of them is ever without a heartbeat
            self._thread = threading.Thread(target=self._run, name="optuna-heartbeats", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def _beat(self) -> None:
        for trial_id in self.trial_ids:
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as error:  # a busy database: the next beat tries again
                log.warning("heartbeat of trial id %d not recorded: %s", trial_id, error)


class StaleTrials:
    """Optuna's `heartbeat_stale_trial_callback` (it hears of exactly the trials it failed), and
    `fail`, which fails a study's stale trials and logs which."""

    def __init__(self):
        self.numbers: list[int] = []

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.numbers.append(trial.number)

    def fail(self, study: optuna.Study) -> list[int]:
        with quiet_heartbeat_warnings():
            optuna.storages.fail_stale_trials(study)
        failed, self.numbers = sorted(self.numbers), []
        if failed:
            log.warning("study %s: trials %s were RUNNING with no heartbeat for over %d s (their sweep was "
                        "killed?); marked FAIL so they are not counted as taken", study.study_name,
                        ", ".join(map(str, failed)), grace_period(study._storage.get_heartbeat_interval()))
        return failed
