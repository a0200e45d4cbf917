"""Shared fixtures: the real GLUE copy beside the checkout, and tiny composed run configs.

Marker `e2e`: the test trains, starts processes or reads the GLUE data. It is set on every test
that asks for `glue_dir` and on the modules that train; `pytest -m "not e2e"` runs the loss math,
mapping, model and config tests without the data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
DEFAULT_GLUE_DIR = REPO.parent / "shared" / "data" / "glue"

# A run that takes seconds on 2 CPU cores: tiny random teacher, small real subsets, few steps,
# fp32 everywhere (the same numbers on a GPU machine, where bf16 would otherwise be on).
TINY_RUN = [
    "trainer.bf16=false",
    "teacher.finetune.bf16=false",
    "teacher=tiny",
    "student=bert2l",
    "dataset=rte",
    "dataset.max_train_samples=48",
    "dataset.max_eval_samples=32",
    "dataset.max_seq_length=64",
    "trainer.max_steps=4",
    "trainer.per_device_train_batch_size=8",
    "trainer.logging_steps=2",
    "trainer.eval_strategy=no",
    "teacher.finetune.max_steps=4",
    "teacher.finetune.per_device_train_batch_size=8",
    "teacher.finetune.eval_strategy=no",
]


def glue_path() -> Path:
    """$GLUE_DIR, else the shared copy beside the checkout (which may be missing)."""
    return Path(os.environ.get("GLUE_DIR", DEFAULT_GLUE_DIR))


def pytest_collection_modifyitems(items):
    for item in items:
        if "glue_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = glue_path()
    assert (path / "RTE" / "train.tsv").is_file(), (
        f"real GLUE data not found at {path}: set GLUE_DIR to shared/data/glue"
    )
    return path


@pytest.fixture
def make_config(tmp_path):
    """Compose `conf/` with overrides, pointed at a private MLflow store, cache and output dir."""

    def make(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        with open_dict(cfg):
            cfg.dataset.data_dir = str(glue_path())
            cfg.cache_dir = str(tmp_path / "cache")
            cfg.output_dir = str(tmp_path / "out")
            cfg.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        return cfg

    return make
