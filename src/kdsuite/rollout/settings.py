"""The `rollout.*` settings, typed and checked where they are built (before any model is loaded).

`rollout.source` says whose text a training step is computed on:

- `dataset`: the data's reference responses (no generation; every earlier run);
- `teacher`: the teacher's sampled responses, generated once per (teacher, data, generation
  settings) and stored beside the teacher cache (SeqKD, Kim and Rush 2016);
- `student`: with probability `lambda` (per micro-batch) the student's own samples of the batch's
  prompts, else the data's (GKD, Agarwal et al. 2024); `schedule=linear` raises the probability
  from 0 at the first step to `lambda` at the last (ImitKD's annealing, Lin et al. 2020);
- `adaptive`: DistiLLM's adaptive off-policy schedule with a replay buffer (Ko et al. 2024).

Student and teacher samples are drawn at `temperature` and `top_p` (top-k off), up to
`max_new_tokens` new tokens after the prompt, the prompt kept as the data wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("dataset", "teacher", "student", "adaptive")
SCHEDULES = ("constant", "linear")
REPLAY_RATIOS = ("decreasing", "increasing", "constant")
ON_POLICY = ("student", "adaptive")  # sources that sample the student during training


@dataclass(frozen=True)
class RolloutSettings:
    """`rollout.*`; every range is checked here, naming the key (`lambda` is `fraction` here,
    `lambda` being a Python keyword)."""

    source: str = "dataset"
    fraction: float = 0.0  # rollout.lambda
    schedule: str = "constant"
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    generation_seed: int = 0  # teacher: the seed of its sampling pass (one store for every run)
    init_threshold: float = 0.0  # adaptive: DistiLLM's --init-threshold
    loss_eps: float = 0.1  # adaptive: --loss-eps
    threshold_step: float = 0.1  # adaptive: the fixed +0.1 of DistiLLM's finetune.py
    capacity: int = 1000  # adaptive: --capacity (examples kept in the replay buffer)
    replay_ratio: str = "decreasing"  # adaptive: --replay-ratio
    validation_interval: int | None = None  # adaptive: optimizer steps between validation losses; None: one epoch

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"rollout.source={self.source!r} is not one of {list(SOURCES)}")
        if self.source == "dataset":
            return
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"rollout.lambda={self.fraction} must lie in [0, 1]")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"rollout.schedule={self.schedule!r} is not one of {list(SCHEDULES)}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
            raise ValueError(f"rollout.max_new_tokens={self.max_new_tokens!r} must be a positive integer")
        if self.temperature <= 0:
            raise ValueError(f"rollout.temperature={self.temperature} must be > 0 (samples are drawn)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"rollout.top_p={self.top_p} must lie in (0, 1]")
        if not 0.0 <= self.init_threshold <= 1.0:
            raise ValueError(f"rollout.init_threshold={self.init_threshold} must lie in [0, 1]")
        if self.loss_eps < 0 or self.threshold_step < 0:
            raise ValueError(f"rollout.loss_eps={self.loss_eps} and rollout.threshold_step={self.threshold_step} "
                             f"must be >= 0")
        if self.capacity < 1:
            raise ValueError(f"rollout.capacity={self.capacity} must be >= 1")
        if self.replay_ratio not in REPLAY_RATIOS:
            raise ValueError(f"rollout.replay_ratio={self.replay_ratio!r} is not one of {list(REPLAY_RATIOS)}")
        if self.validation_interval is not None and (isinstance(self.validation_interval, bool)
                                                     or not isinstance(self.validation_interval, int)
                                                     or self.validation_interval < 1):
            raise ValueError(f"rollout.validation_interval={self.validation_interval!r} must be null (once per "
                             f"epoch) or an integer >= 1 (optimizer steps)")

    @property
    def on_policy(self) -> bool:
        return self.source in ON_POLICY


def steps_per_epoch(train_examples: int, batch_size: int, accumulation: int, world_size: int) -> int:
    """Optimizer steps in one epoch as DistiLLM's finetune.py counts them (`train_iters_per_epoch =
    int(len(train) / (batch_size * dp_world_size * gradient_accumulation_steps))`), at least 1."""
    return max(1, train_examples // (batch_size * accumulation * world_size))


def resolved_validation_interval(settings: RolloutSettings, train_examples: int, batch_size: int,
                                 accumulation: int, world_size: int) -> int:
    """`rollout.validation_interval`, or with null the optimizer steps of one epoch: DistiLLM's
    scripts pass `--eval-interval -1`, which finetune.py turns into `train_iters_per_epoch`."""
    if settings.validation_interval is not None:
        return settings.validation_interval
    return steps_per_epoch(train_examples, batch_size, accumulation, world_size)


KEY_OF_FIELD = {"fraction": "lambda"}


def rollout_settings(section) -> RolloutSettings:
    """`RolloutSettings` from the `rollout` config section (a mapping); unknown keys are refused."""
    values = dict(section or {})
    fields = {name for name in RolloutSettings.__dataclass_fields__}
    allowed = sorted(KEY_OF_FIELD.get(name, name) for name in fields)
    unknown = sorted(key for key in values if key not in allowed)
    if unknown:
        raise ValueError(f"rollout.{unknown[0]} is not a rollout setting; they are {allowed}")
    if "lambda" in values:
        values["fraction"] = values.pop("lambda")
    return RolloutSettings(**values)


def check_rollout(settings: RolloutSettings, task, loss_name: str, loss_needs_teacher: bool,
                  teacher_outputs: str) -> None:
    """What the source cannot be combined with: classifiers (nothing to generate), losses that
    read no teacher (nothing scores the student's samples) and cached teacher outputs (computed
    once on the data's text, which on-policy samples are not)."""
    if settings.source == "dataset":
        return
    task.track.check_rollout_source(task, settings.source)
    if settings.on_policy and not loss_needs_teacher:
        raise ValueError(
            f"rollout={settings.source} trains on the student's own samples, which only a loss that reads the "
            f"teacher can score; loss={loss_name} reads none: use loss=kd or loss=fdd, or rollout=teacher"
        )
    if settings.on_policy and teacher_outputs == "cached":
        raise ValueError(
            f"rollout={settings.source} trains on text the student writes during training, which the teacher must "
            f"score in the same step; teacher.outputs=cached holds the teacher's outputs on the data's text only: "
            f"use teacher.outputs=live (rollout=teacher works with cached outputs)"
        )
