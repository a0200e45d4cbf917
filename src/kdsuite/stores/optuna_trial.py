"""What an Optuna sweep shares with each of its trials: the `optuna.*` config keys that name the
trial in its study (declared with null defaults in `conf/config.yaml`, set by the sweeper, read
back by pruning), and how a process opens the study's storage."""

from __future__ import annotations

import optuna
from omegaconf import DictConfig

from kdsuite.stores.lock import database_lock, sqlite_path

SECTION = "optuna"
# The keys of `optuna:` in conf/config.yaml, in the order the sweeper sets them.
TRIAL_KEYS = ("storage", "study_name", "trial_id")
SQLITE_BUSY_TIMEOUT_S = 60  # writers queue this long for a SQLite study shared by several processes


def trial_overrides(storage: str, study_name: str, trial_id: int) -> list[str]:
    """Hydra overrides that tell a trial which study and trial it is (`optuna.storage=...`)."""
    values = dict(zip(TRIAL_KEYS, (storage, study_name, trial_id)))
    return [f"{SECTION}.{key}='{value}'" if isinstance(value, str) else f"{SECTION}.{key}={value}"
            for key, value in values.items()]


def trial_spec(cfg: DictConfig) -> dict | None:
    """`{storage, study_name, trial_id}` of the trial this run is, or None outside a sweep."""
    section = cfg.get(SECTION)
    if not section or section.get("trial_id") is None:
        return None
    return {key: section.get(key) for key in TRIAL_KEYS}


def open_storage(url: str | None, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 stale_trial_callback=None) -> optuna.storages.BaseStorage | None:
    """Optuna storage for an RDB URL (None: in memory), with Optuna's trial heartbeats when
    `heartbeat_interval` is given (the sweeper's; a trial process needs none).

    The storage is opened, and on a new database its schema created, under the database's lock (a
    file lock beside SQLite, an advisory lock on PostgreSQL/MySQL), so processes started together
    don't race on the schema (two workers on a new PostgreSQL database both ran `CREATE TYPE
    studydirection`, and one failed); SQLite writers wait up to SQLITE_BUSY_TIMEOUT_S for each other.
    """
    if url is None:
        return None
    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if sqlite_path(url) else {}
    with database_lock(url, "optuna schema"):
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                          grace_period=grace_period,
                                          heartbeat_stale_trial_callback=stale_trial_callback)
