"""Config of the `kdsuite_optuna` sweeper (`hydra/sweeper=kdsuite_optuna`)."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class KdsuiteOptunaSweeperConf:
    _target_: str = "hydra_plugins.kdsuite_optuna_sweeper.sweeper.KdsuiteOptunaSweeper"
    _recursive_: bool = False  # sampler and pruner arrive as specs: the sampler is built per trial
    # The Optuna study; re-running the same sweep with the same name and storage resumes it.
    study_name: Optional[str] = None  # null: <preset>_<task>_<student>_<hash of the experiment>
    storage: Optional[str] = "sqlite:///optuna.db"  # any Optuna RDB URL; null: in memory
    direction: str = "maximize"  # every kdsuite objective (the task's main dev metric) is maximised
    n_trials: int = 12  # trials added by this invocation
    # The study's size: with it, an invocation stops once the study holds this many trials that did
    # not fail (from every worker and earlier invocations), so re-running a sweep tops it up to
    # max_trials instead of adding n_trials more. null: no limit.
    max_trials: Optional[int] = None
    # Seconds between the heartbeats the sweeper records for its running trials; a RUNNING trial
    # silent for 4 intervals (its sweep was killed) is failed before the next ask, so max_trials
    # does not count it (heartbeat.py). null: no heartbeats.
    heartbeat_interval: Optional[int] = 30
    n_jobs: int = 1  # trials run at once, each in its own process (needs a parallel hydra/launcher)
    # Built afresh per trial with seed SeedSequence((seed, trial number)); see sampling.py.
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0})
    pruner: Any = None  # e.g. {_target_: optuna.pruners.MedianPruner}; trials report each eval
    # Search space: key -> Hydra override syntax, e.g. "tag(log, interval(0.1, 10))",
    # "choice(1.0, 2.0, 4.0)", "range(1, 4)". Sweep overrides on the command line add to it.
    params: Dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="kdsuite_optuna", node=KdsuiteOptunaSweeperConf, provider="kdsuite"
)
