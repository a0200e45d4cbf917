"""Per-trial seeding of the configured Optuna sampler, so that workers never repeat each other.

An Optuna sampler seeded with one number draws the same sequence in every process that builds it:
two workers on one study, or a resumed sweep, asked "trial 0's" parameters again. Here the
sampler of the config (`hydra.sweeper.sampler`, a `_target_` spec) is built afresh for every
trial, seeded with `SeedSequence((seed, trial number))`. Trial numbers are unique in a study (the
storage hands them out), so every trial draws from its own stream, whichever process asks for it,
and one process running a study from scratch still gets the same trials for the same `seed`.
`seed: null` seeds each trial's sampler from fresh OS entropy instead (not reproducible).

The sampler's state otherwise lives in the study (past trials, grid ids), so nothing is lost by
building it per trial. Two exceptions are built once, with `seed` itself: samplers whose seed fixes
a structure every worker must share (GridSampler's shuffled grid order, QMCSampler's scrambled
sequence; both hand out points by trial number, so workers never repeat as long as they agree on
the order, which takes a fixed seed, 0 when none is given), and sampler classes without a `seed`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import numpy as np
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.samplers import BaseSampler, GridSampler, QMCSampler

log = logging.getLogger(__name__)

# Samplers whose seed fixes the order in which trial numbers map to points.
SHARED_ORDER_SAMPLERS = (GridSampler, QMCSampler)


def trial_seed(seed: int, trial_number: int) -> int:
    """The seed of one trial's sampler: a 32-bit draw of `SeedSequence((seed, trial_number))`."""
    return int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """Delegates to a sampler built from `spec` for each trial, seeded by the trial's number."""

    def __init__(self, spec: DictConfig | dict):
        self.spec = OmegaConf.create(spec) if isinstance(spec, dict) else spec
        sampler_class = get_class(self.spec._target_)
        accepts_seed = "seed" in inspect.signature(sampler_class).parameters
        self.seed = self.spec.get("seed") if accepts_seed else None
        shared_order = issubclass(sampler_class, SHARED_ORDER_SAMPLERS)
        if shared_order and self.seed is None:
            log.info("%s: seed 0, so that every worker shares one order of points", self.spec._target_)
            self.seed = 0
        self.per_trial = accepts_seed and not shared_order
        if not accepts_seed:
            log.warning("%s takes no seed: concurrent or resumed workers may repeat parameters",
                        self.spec._target_)
        kwargs = {"seed": self.seed} if accepts_seed else {}
        self.current = instantiate(self.spec, **kwargs, _convert_="all")

    def before_trial(self, study, trial) -> None:
        # Called by Trial() for each new trial before anything is sampled.
        if self.per_trial:
            seed = None if self.seed is None else trial_seed(self.seed, trial.number)
            self.current = instantiate(self.spec, seed=seed, _convert_="all")
        self.current.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial) -> dict[str, Any]:
        return self.current.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return self.current.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self.current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.current.reseed_rng()

    def __str__(self) -> str:
        return f"{type(self.current).__name__}(seeded per trial from seed={self.seed})"
