"""Trials a killed sweep left RUNNING, failed so that later sweeps don't count them as taken.

A sweep process that dies without warning (SIGKILL, a lost machine) cannot tell Optuna how its
in-flight trials ended: they stay RUNNING, and `max_trials` counts them as held, so a re-run tops
the study up short. While its trials run, the sweeper records an Optuna heartbeat for each of them
every `heartbeat_interval` seconds (`TrialHeartbeats`, one thread); before asking for trials it
fails the RUNNING trials whose heartbeat is older than GRACE_INTERVALS intervals
(`fail_stale_trials`). A trial that never had a heartbeat (started by an older sweeper) is never
taken for stale: it may be alive. Optuna keeps heartbeats for `Study.optimize`; the sweeper uses
the same storage methods (`record_heartbeat`, `optuna.storages.fail_stale_trials`) around ask/tell.
"""

from __future__ import annotations

import logging
import threading

import optuna

log = logging.getLogger(__name__)

# Silence for this many intervals makes a trial stale: room for a slow shared database, where a
# heartbeat can wait SQLITE_BUSY_TIMEOUT_S for a writer.
GRACE_INTERVALS = 4


def grace_period(heartbeat_interval: int) -> int:
    return GRACE_INTERVALS * heartbeat_interval


class TrialHeartbeats:
    """Records a heartbeat for each trial every interval while the block runs (context manager).
    A failed write is logged and retried at the next beat; the trial is failed only after
    GRACE_INTERVALS silent intervals."""

    def __init__(self, storage, trials: list[optuna.Trial]):
        self.storage = storage
        self.trial_ids = [trial._trial_id for trial in trials]
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


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the study's RUNNING trials whose heartbeat went silent; returns their numbers."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    if not running:
        return []
    optuna.storages.fail_stale_trials(study)
    failed = sorted(t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
                    if t.number in running)
    if failed:
        log.warning("study %s: trials %s were RUNNING with no heartbeat for over %d s (their sweep was "
                    "killed?); marked FAIL so they are not counted as taken", study.study_name,
                    ", ".join(map(str, failed)), grace_period(study._storage.get_heartbeat_interval()))
    return failed
