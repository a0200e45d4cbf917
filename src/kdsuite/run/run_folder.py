"""Where a run keeps its files, and how a re-run of the same command finds them.

Unless `output_dir` is set, a run's folder is `outputs/runs/<hash>/` under the launch folder. The
hash covers the composed config, seed included, minus the keys that do not change what is
trained: `resume`, `tracking.*`, `cache_dir`, `output_dir` and a sweep's bookkeeping
(`optuna.*`). The folder holds `trainer/` (checkpoints, written atomically by the Trainer),
`mlflow_run.json` (the MLflow run that a resume continues, per tracking store and experiment) and, with `save_student`, `student/`.

A re-run whose folder holds checkpoints must say what to do with them: `resume=true` continues
from the newest one; without it the run stops before any work rather than overwrite them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from transformers.trainer_utils import get_last_checkpoint

RUNS_DIR = Path("outputs") / "runs"
NOT_IDENTITY = ("resume", "tracking", "cache_dir", "output_dir", "optuna", "hydra")
RUN_ID_FILE = "mlflow_run.json"


class CheckpointsInTheWay(RuntimeError):
    """The run's folder holds checkpoints and `resume` is off."""


def config_hash(cfg: DictConfig, leave_out: tuple[str, ...] = NOT_IDENTITY) -> str:
    """16 hex digits of the resolved config without the top-level keys in `leave_out`."""
    described = OmegaConf.to_container(cfg, resolve=True)
    for key in leave_out:
        described.pop(key, None)
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_folder(cfg: DictConfig) -> Path:
    """`output_dir` when given, else `outputs/runs/<config_hash>`."""
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    return RUNS_DIR / config_hash(cfg)


def trainer_dir(folder: Path) -> Path:
    return folder / "trainer"


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest complete `checkpoint-<step>` (the Trainer renames a checkpoint into place only
    once it is written, so every one found is complete)."""
    checkpoints = trainer_dir(folder)
    if not checkpoints.is_dir():
        return None
    found = get_last_checkpoint(str(checkpoints))
    return Path(found) if found else None


def checkpoint_to_resume(cfg: DictConfig, folder: Path) -> Path | None:
    """The checkpoint this run continues from (None: start fresh); refuses to run over checkpoints
    unless `resume=true`."""
    newest = newest_checkpoint(folder)
    if newest is not None and not cfg.get("resume"):
        raise CheckpointsInTheWay(
            f"{folder} already holds checkpoints of this exact run (newest: {newest.name}). "
            f"Add resume=true to continue from it, or move the folder away to start over."
        )
    return newest


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def store_identity(tracking_uri: str) -> str:
    """The URI with a SQLite path made absolute (`sqlite:///mlflow.db` is relative to the launch folder)."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        return prefix + str(Path(tracking_uri[len(prefix):]).expanduser().resolve())
    return tracking_uri


def _saved_runs(folder: Path) -> list[dict]:
    path = folder / RUN_ID_FILE
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    # A file of one run without its experiment was written before runs were told apart by it.
    return saved["runs"] if "runs" in saved else [saved]


def save_run_id(folder: Path, run_id: str, tracking_uri: str, experiment: str) -> None:
    """Record `run_id` as this folder's run in (store, experiment). The same config run in two
    experiments (a recipe check and a grid) shares a folder; each keeps its own run."""
    folder.mkdir(parents=True, exist_ok=True)
    where = {"tracking_uri": store_identity(tracking_uri), "experiment": experiment}
    others = [saved for saved in _saved_runs(folder)
              if (saved.get("tracking_uri"), saved.get("experiment")) != tuple(where.values())]
    (folder / RUN_ID_FILE).write_text(json.dumps({"runs": [*others, {"run_id": run_id, **where}]}))


def saved_run_id(folder: Path, tracking_uri: str, experiment: str) -> str | None:
    """The MLflow run this folder's checkpoints belong to in (store, experiment), if any. A run
    recorded without its experiment is returned for any experiment: the caller checks it."""
    for saved in reversed(_saved_runs(folder)):
        if saved.get("tracking_uri") == store_identity(tracking_uri) and saved.get("experiment", experiment) == experiment:
            return saved["run_id"]
    return None
