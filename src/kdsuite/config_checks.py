"""Every setting of a composed config checked by name, before any work: types and ranges of the
seed, the training arguments of student and teacher, the dataset sizes and the loss's own keys.

`check_settings(cfg)` raises ValueError naming the key, the value and what is allowed. It needs
no data, model or store, and imports nothing heavier than the loss's module, so a sweep's own
process runs it once on the settings its trials share before any trial starts
(`hydra_plugins.kdsuite_optuna_sweeper`), and every run runs it first (`build_run`, `train`).
Checks that need the data or the models (layer mapping, widths, a loss's view of the training
set) stay in `build_run`.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from kdsuite.identity import plain_config
from kdsuite.tracks import task_of
from kdsuite.tracks.base import Track
from kdsuite.tracks.classification import MIN_SEQ_LENGTH  # noqa: F401  (re-exported: tests cite the bound here)

SEED_LIMIT = 2**32  # numpy's seed range; transformers.set_seed seeds numpy too

# `trainer.*` / `teacher.finetune.*` numbers that TrainingArguments, the optimizer, the scheduler or
# the data loader would reject late or with an error that names no key: (kind, lowest, highest),
# bounds included unless marked open with a tuple ("open", value).
NUMBERS: dict[str, tuple[type, Any, Any]] = {
    "learning_rate": (float, 0.0, None),
    "weight_decay": (float, 0.0, None),
    "adam_beta1": (float, 0.0, ("open", 1.0)),
    "adam_beta2": (float, 0.0, ("open", 1.0)),
    "adam_epsilon": (float, 0.0, None),
    "max_grad_norm": (float, 0.0, None),
    "num_train_epochs": (float, ("open", 0.0), None),
    "warmup_ratio": (float, 0.0, 1.0),
    "label_smoothing_factor": (float, 0.0, ("open", 1.0)),
    "per_device_train_batch_size": (int, 1, None),
    "per_device_eval_batch_size": (int, 1, None),
    "gradient_accumulation_steps": (int, 1, None),
    "warmup_steps": (float, 0.0, None),  # transformers 5: a fraction of the steps when below 1
    "logging_steps": (float, ("open", 0.0), None),
    "save_steps": (float, ("open", 0.0), None),
    "eval_steps": (float, ("open", 0.0), None),
    "save_total_limit": (int, 1, None),
    "dataloader_num_workers": (int, 0, None),
    "seed": (int, 0, SEED_LIMIT - 1),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(bound: Any) -> tuple[float, bool]:
    if isinstance(bound, tuple):
        return bound[1], True
    return bound, False


def check_number(key: str, value: Any, kind: type, lowest: Any = None, highest: Any = None,
                 allow_null: bool = False) -> None:
    """`value` is a number of `kind` (an integer for int) within the bounds, or null when allowed."""
    if value is None and allow_null:
        return
    kind_name = "an integer" if kind is int else "a number"
    null = " or null" if allow_null else ""
    if not _is_number(value) or (kind is int and not float(value).is_integer()):
        raise ValueError(f"{key}={value!r} is not {kind_name}{null}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{key}={value} is not a finite number")
    low, low_open = _describe(lowest)
    high, high_open = _describe(highest)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high}")
        raise ValueError(f"{key}={value} must be {' and '.join(parts)}{null}")


def check_finite(cfg: DictConfig) -> None:
    """Every number in the config is finite (`loss.temperature=nan` would pass a range check)."""
    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"{prefix}={node} is not a finite number")
        elif isinstance(node, str):
            try:
                number = float(node)
            except ValueError:
                return
            if not math.isfinite(number):
                raise ValueError(f"{prefix}={node} is not a finite number")

    walk(plain_config(cfg), "")


def check_training_section(section: dict | None, name: str) -> None:
    """`trainer.*` or `teacher.finetune.*`: the numbers in NUMBERS, and `max_steps` (-1 for epochs)."""
    if not section:
        return
    for key, (kind, lowest, highest) in NUMBERS.items():
        if key in section:
            check_number(f"{name}.{key}", section[key], kind, lowest, highest,
                         allow_null=key in ("eval_steps", "save_total_limit"))
    if "max_steps" in section:
        steps = section["max_steps"]
        check_number(f"{name}.max_steps", steps, int)
        if steps != -1 and steps < 1:
            raise ValueError(f"{name}.max_steps={steps} must be >= 1, or -1 to train num_train_epochs")


def check_dataset(dataset: dict, track: Track) -> None:
    """The subset sizes, and the length settings the track declares (`Track.length_settings`)."""
    for key in ("max_train_samples", "max_eval_samples"):
        if key in dataset:
            check_number(f"dataset.{key}", dataset[key], int, 1, allow_null=True)
    for key, fewest in track.length_settings.items():
        if track.lengths_required or key in dataset:
            check_number(f"dataset.{key}", dataset.get(key), int, fewest)


def loss_parameters(target: str) -> dict[str, inspect.Parameter]:
    """The settings a loss class takes (its `__init__` arguments after `context`)."""
    cls = get_class(target)
    parameters = dict(inspect.signature(cls.__init__).parameters)
    for name in ("self", "context"):
        parameters.pop(name, None)
    return parameters


def check_loss(loss: dict) -> None:
    """`loss.*`: every key is a setting of the loss class, and a number where the class takes one
    (`loss.alpha=high` is refused here, not deep inside the loss or by Hydra's instantiate)."""
    target = loss.get("_target_")
    if not target:
        raise ValueError("loss._target_ is missing: a loss config names its class (conf/loss/*.yaml)")
    try:
        parameters = loss_parameters(target)
        hints = typing.get_type_hints(get_class(target).__init__)
    except Exception as error:  # an unimportable class, or hints that do not resolve
        raise ValueError(f"loss._target_={target!r} cannot be loaded: {type(error).__name__}: {error}") from error
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for key, value in loss.items():
        if key.startswith("_"):
            continue
        if key not in parameters and not takes_any:
            allowed = sorted(name for name, p in parameters.items() if p.kind != inspect.Parameter.VAR_KEYWORD)
            raise ValueError(f"loss.{key} is not a setting of {target}; its settings are {allowed}")
        hint = hints.get(key)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `int | None`: check the int
            kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)]
            hint = kinds[0] if len(kinds) == 1 else hint
        if hint in (int, float) and value is not None:
            if not _is_number(value) or (hint is int and not float(value).is_integer()):
                kind = "an integer" if hint is int else "a number"
                raise ValueError(f"loss.{key}={value!r} is not {kind}")
        elif hint is bool and not isinstance(value, bool):
            raise ValueError(f"loss.{key}={value!r} is not true or false")


def check_settings(cfg: DictConfig) -> None:
    """Check the composed config's settings by name; raises ValueError before any work."""
    check_finite(cfg)
    check_number("seed", cfg.get("seed"), int, 0, SEED_LIMIT - 1)
    task = task_of(cfg.dataset)
    check_training_section(OmegaConf.to_container(cfg.trainer, resolve=True), "trainer")
    finetune = cfg.teacher.get("finetune")
    if finetune is not None:
        check_training_section(OmegaConf.to_container(finetune, resolve=True), "teacher.finetune")
    check_dataset(OmegaConf.to_container(cfg.dataset, resolve=True), task.track)
    check_loss(OmegaConf.to_container(cfg.loss, resolve=True))
