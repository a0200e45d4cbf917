"""Shared fixtures: the real GLUE copy beside the checkout, and tiny composed run configs.

Marker `e2e`: the test trains, starts processes or reads the GLUE data. It is set on every test
that asks for `glue_dir` and on the modules that train; `pytest -m "not e2e"` runs the loss math,
mapping, model and config tests without the data. Marker `slow(seconds=N)`: the test took about N
seconds (N >= 10) on a 2-core CPU; such tests run first, longest first, and `-m "not slow"` leaves
them out.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from kdsuite.identity import key_hash

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


if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # Under pytest-xdist (README's `-n 2`) each worker trains in its own process: the cores are
    # split between them, as run.py's sweeps split them between trials (2 workers x 2 threads on 2
    # cores made the in-process tests 1.2x slower). Processes the tests start choose their own.
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def glue_path() -> Path:
    """$GLUE_DIR, else the shared copy beside the checkout (which may be missing)."""
    return Path(os.environ.get("GLUE_DIR", DEFAULT_GLUE_DIR))


def expected_seconds(item) -> float:
    """A `slow` test's measured duration (`@pytest.mark.slow(seconds=N)`), else 0."""
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("seconds", 0)) if marker else 0.0


def pytest_collection_modifyitems(items):
    for item in items:
        if "glue_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
    # Longest first (a stable sort: the rest keep their order). Under `-n 2 --dist loadgroup`
    # (README's test command) each worker takes the next test when it is free, so the long
    # process-level tests run beside the short ones instead of ending the run on one worker while
    # the other idles; tests that share a costly module fixture carry one `xdist_group` and run on
    # one worker, which then builds the fixture once.
    items.sort(key=lambda item: -expected_seconds(item))


@pytest.fixture(autouse=True, scope="session")
def mlflow_stores_from_a_template(tmp_path_factory):
    """A new SQLite MLflow store opened in this process gets its tables from a copy of one migrated
    store (SQLite's backup API, into the file MLflow has just opened) instead of running MLflow's
    ~60 alembic migrations again: about 3 s a store on an idle 2-core CPU, 15 s on a loaded one,
    once per in-process end-to-end test. The store still appears only when MLflow opens it (tests
    that check a refused run left no store keep their meaning), the first one per worker is
    migrated for real, and processes the tests start (the store concurrency test among them)
    migrate as users' do."""
    import mlflow.store.db.utils as db_utils
    import mlflow.store.model_registry.sqlalchemy_store as registry_store

    migrate = db_utils._initialize_tables
    template = tmp_path_factory.getbasetemp() / "mlflow_template.db"

    def initialize(engine):
        database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
        if not database or database == ":memory:":
            return migrate(engine)
        source, target = (template, database) if template.exists() else (database, template)
        if source == database:
            migrate(engine)
        with closing(sqlite3.connect(source)) as reading, closing(sqlite3.connect(target)) as writing:
            reading.backup(writing)

    db_utils._initialize_tables = registry_store._initialize_tables = initialize
    yield
    db_utils._initialize_tables = registry_store._initialize_tables = migrate


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = glue_path()
    assert (path / "RTE" / "train.tsv").is_file(), (
        f"real GLUE data not found at {path}: set GLUE_DIR to shared/data/glue"
    )
    return path


@pytest.fixture
def make_config(tmp_path):
    """Compose `conf/` with overrides, pointed at a private MLflow store and cache, and an output
    dir of its own per set of overrides (a run folder belongs to one config: the same overrides
    find their folder again, as a resume needs, and different ones never share one)."""

    def make(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        with open_dict(cfg):
            cfg.dataset.data_dir = str(glue_path())
            cfg.cache_dir = str(tmp_path / "cache")
            cfg.output_dir = str(tmp_path / "out" / key_hash(list(overrides), 12))
            cfg.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        return cfg

    return make


def write_dolly(path: Path, *, with_context: bool = False, ending: str = ".") -> Path:
    """24 Dolly-format rows about four things and three colours ("What color is the sky?" ->
    "The sky is blue."), for the causal track on tiny models. `with_context` fills every other
    row's context with its answer; `ending` closes each response (a longer one gives a
    cross-tokenizer test more tokens to align)."""
    colors, things = ["red", "blue", "green"], ["apple", "sky", "grass", "snow"]
    rows = []
    for i in range(24):
        thing, color = things[i % 4], colors[i % 3]
        context = f"The {thing} is {color}." if with_context and i % 2 else ""
        rows.append({"instruction": f"What color is the {thing}?", "context": context,
                     "response": f"The {thing} is {color}{ending}"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def dolly_jsonl(tmp_path) -> Path:
    """`write_dolly`'s rows, without context, at `tmp_path/dolly.jsonl`."""
    return write_dolly(tmp_path / "dolly.jsonl")


@pytest.fixture
def dolly_jsonl_with_context(tmp_path) -> Path:
    """`write_dolly`'s rows, every other one with a context, at `tmp_path/dolly.jsonl`."""
    return write_dolly(tmp_path / "dolly.jsonl", with_context=True)


@pytest.fixture
def one_thread():
    """In-process runs on one thread, as the single-threaded run.py processes that the resume
    tests kill: their sums then reduce in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
