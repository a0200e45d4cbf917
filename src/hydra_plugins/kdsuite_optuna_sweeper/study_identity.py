"""Which experiment a sweep is, and so which Optuna study (and MLflow parent run) it joins.

The default study name is `<preset>_<task>_<student>_<hash>`: the sweep preset (`sweep=`, or
`sweep` without one), the dataset, the student, and a hash of the composed config of the
experiment. The hash covers every setting a trial shares with the others, so two sweeps differing
in anything else (say `trainer.learning_rate`) never share a study. Left out: the swept keys (they
vary by trial), `hydra.*` (the search space, n_trials, folders), `tracking.*` (where results go),
`cache_dir`, `output_dir`, `resume`, the `optuna.*` trial bookkeeping, and `dataset.data_dir`
(where the data sits on each machine, so that workers on several machines share one study).
"""


from dataclasses import dataclass
from typing import Any, Iterable

from omegaconf import DictConfig

from kdsuite.identity import STUDY, described_config, key_hash

EXCLUDED = STUDY
HASH_LENGTH = 10


@dataclass(frozen=True)
class StudyIdentity:
    preset: str
    task: str
    student: str
    hash: str
    hashed_config: dict[str, Any]  # what the hash was computed over
    excluded: tuple[str, ...]  # the keys left out of it

    @property
    def default_name(self) -> str:
        return f"{self.preset}_{self.task}_{self.student}_{self.hash}"


def config_hash(config: dict[str, Any]) -> str:
    """First HASH_LENGTH hex digits of sha256 over the config as canonical JSON (sorted keys)."""
    return key_hash(config, HASH_LENGTH)


def identify(composed: DictConfig, swept_keys: Iterable[str], preset: str | None) -> StudyIdentity:
    """The identity of the experiment `composed` (a trial's config without its sampled values)."""
    swept = tuple(sorted(swept_keys))
    hashed = described_config(composed, (*EXCLUDED, *swept))

    def name_of(group: str) -> str:
        return "swept" if group in swept else str(composed.get(group, {}).get("name", group))

    return StudyIdentity(
        preset=preset or "sweep",
        task=name_of("dataset"),
        student=name_of("student"),
        hash=config_hash(hashed),
        hashed_config=hashed,
        excluded=(*EXCLUDED, *swept),
    )
