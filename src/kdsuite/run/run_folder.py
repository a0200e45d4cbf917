"""Where a run keeps its files, how a re-run of the same command finds them, and how a folder
proves whose it is.

A run's identity (`RunIdentity`) is a hash of its composed config, seed included, less the keys
that do not change what is trained (`kdsuite.identity.RUN`: `resume`, `tracking.*`, `cache_dir`,
`output_dir`, `save_student` and a sweep's bookkeeping), together with the digest of the data rows
it uses (`data_digests`). Unless `output_dir` is set, the folder is `outputs/runs/<identity>/`
under the launch folder. The folder records the identity that made it (`kdsuite_run.json`, the
config it was computed over included), and holds `trainer/` (checkpoints, written atomically by
the Trainer), `mlflow_run.json` (the MLflow run that a resume continues, per tracking store and
experiment) and, with `save_student`, `student/`.

A run that finds checkpoints or a run record in its folder compares identities before any work
(`check_identity`): a folder of another config is refused, naming the keys that differ. A folder
made before identities were recorded is accepted only under its default name (which is the
identity); under an explicit `output_dir` it is refused, since nothing says whose it is.

A re-run whose folder holds checkpoints must say what to do with them: `resume=true` continues
from the newest complete one (`checkpoint_to_resume`); without it the run stops before any work
rather than overwrite them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from kdsuite.identity import RUN, config_identity, described_config, differing_keys
from kdsuite.weights_files import weights_problems

log = logging.getLogger(__name__)

RUNS_DIR = Path("outputs") / "runs"
RUN_ID_FILE = "mlflow_run.json"
IDENTITY_FILE = "kdsuite_run.json"
# What a checkpoint must hold for the Trainer to continue exactly: optimizer and scheduler states
# (without them transformers silently starts a fresh optimizer), the trainer state (step, logs,
# callbacks) and the weights (the loss's learned parts and buffers, such as CoDIR's memory banks,
# are saved with them: the loss is a submodule of the student).
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


class CheckpointsInTheWay(RuntimeError):
    """The run's folder holds checkpoints and `resume` is off."""


class FolderOfAnotherRun(RuntimeError):
    """The run's folder was made by another config, or says nothing of whose it is."""


class NoCompleteCheckpoint(RuntimeError):
    """`resume=true`, and every checkpoint in the run's folder lacks a file the Trainer needs."""


@dataclass(frozen=True)
class RunIdentity:
    hash: str
    config: dict  # what the hash covers: the config less `identity.RUN`, and `data` (row digests)

    def as_record(self) -> dict:
        return {"identity": self.hash, "config": self.config}


def run_identity(cfg: DictConfig, digests: dict[str, str], world_size: int = 1) -> RunIdentity:
    """The identity of the run `cfg` over data whose rows have `digests` (`data_digests`), on
    `world_size` processes (each takes its own batch: the effective batch, and so the run, changes
    with their number)."""
    described = {**described_config(cfg, RUN), "data": dict(sorted(digests.items()))}
    if world_size > 1:  # left out on one process, so single-process identities stay as they are
        described["world_size"] = world_size
    return RunIdentity(config_identity(described, ()), described)


def run_folder(cfg: DictConfig, identity: RunIdentity) -> Path:
    """`output_dir` when given, else `outputs/runs/<identity>`."""
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    return RUNS_DIR / identity.hash


def trainer_dir(folder: Path) -> Path:
    return folder / "trainer"


def recorded_identity(folder: Path) -> dict | None:
    path = folder / IDENTITY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def record_identity(folder: Path, identity: RunIdentity) -> None:
    """Write the identity of the run that now owns `folder` (before its first checkpoint)."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / (IDENTITY_FILE + ".partial")
    staging.write_text(json.dumps(identity.as_record(), indent=1, sort_keys=True, default=str))
    staging.replace(folder / IDENTITY_FILE)


def holds_a_run(folder: Path) -> bool:
    """Whether `folder` holds checkpoints or a record of an MLflow run: something a run could
    continue, or return the result of."""
    return (folder / RUN_ID_FILE).is_file() or bool(_checkpoints(folder))


def check_identity(cfg: DictConfig, folder: Path, identity: RunIdentity) -> None:
    """Refuse, before any work, a folder whose checkpoints or run record belong to another config."""
    if not holds_a_run(folder):
        return
    recorded = recorded_identity(folder)
    if recorded is None:
        if not cfg.get("output_dir") and folder.name == identity.hash:
            return  # a default-named folder from before identities were recorded: its name is the identity
        raise FolderOfAnotherRun(
            f"output_dir={str(folder)!r} holds checkpoints or an MLflow run record, but no {IDENTITY_FILE} saying "
            f"which config made them (it was written by an older kdsuite), so they cannot be checked against this "
            f"run; give another output_dir, or move the folder away"
        )
    if recorded.get("identity") == identity.hash:
        return
    differences = differing_keys(recorded.get("config", {}), identity.config)
    listed = "; ".join(f"{key}: {before!r} there, {now!r} here" for key, before, now in
                       ((key, *values) for key, values in list(differences.items())[:12]))
    more = f" (and {len(differences) - 12} more)" if len(differences) > 12 else ""
    raise FolderOfAnotherRun(
        f"{folder} belongs to another run (identity {recorded.get('identity')}, this one is {identity.hash}); "
        f"the configs differ in {listed or 'keys not recorded'}{more}. Give this run its own output_dir (or "
        f"leave output_dir unset for a folder named by its identity), or move that folder away"
    )


def _checkpoints(folder: Path) -> list[Path]:
    """`checkpoint-<step>` folders in the run's trainer folder, newest (highest step) first."""
    checkpoints = trainer_dir(folder)
    if not checkpoints.is_dir():
        return []
    found = [path for path in checkpoints.iterdir()
             if path.is_dir() and path.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
             and path.name.rsplit("-", 1)[1].isdigit()]
    return sorted(found, key=checkpoint_step, reverse=True)


def missing_parts(checkpoint: Path, world_size: int = 1, extra_files: tuple[str, ...] = ()) -> list[str]:
    """What `checkpoint` lacks for an exact resume: trainer state, optimizer, scheduler, weights
    (present and whole), each process's RNG state, and `extra_files` (state kept beside the
    weights, such as a rollout schedule's). Empty when complete."""
    missing = [name for name in (*CHECKPOINT_FILES, *extra_files) if not (checkpoint / name).is_file()]
    missing += weights_problems(checkpoint)
    rng_files = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{rank}.pth" for rank in range(world_size)]
    absent = [name for name in rng_files if not (checkpoint / name).is_file()]
    if absent:
        saved = sorted(path.name for path in checkpoint.glob("rng_state*.pth"))
        other = f" (it holds {', '.join(saved)}: saved by a run on another number of processes)" if saved else ""
        missing.append(", ".join(absent) + other)
    return missing


def checkpoint_to_resume(cfg: DictConfig, folder: Path, world_size: int = 1,
                         extra_files: tuple[str, ...] = ()) -> Path | None:
    """The checkpoint this run continues from (None: start fresh): the newest complete one.

    Without `resume=true`, checkpoints in the folder stop the run. With it, an incomplete newest
    checkpoint is passed over for the newest complete one, with a warning naming what it lacked;
    when none is complete the run stops, naming the folder."""
    checkpoints = _checkpoints(folder)
    if checkpoints and not cfg.get("resume"):
        raise CheckpointsInTheWay(
            f"{folder} already holds checkpoints of this run's config (newest: {checkpoints[0].name}). "
            f"Add resume=true to continue from it, or move the folder away to start over."
        )
    skipped = []
    for checkpoint in checkpoints:
        missing = missing_parts(checkpoint, world_size, extra_files)
        if not missing:
            if skipped:
                log.warning("resume: passing over %s; continuing from %s, the newest complete checkpoint",
                            "; ".join(skipped), checkpoint.name)
            return checkpoint
        skipped.append(f"{checkpoint.name} (missing {', '.join(missing)})")
    if skipped:
        raise NoCompleteCheckpoint(
            f"resume=true, but no checkpoint in {trainer_dir(folder)} is complete: {'; '.join(skipped)}. "
            f"Move the folder away to start over"
        )
    return None


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
        if (saved.get("tracking_uri") == store_identity(tracking_uri)
                and saved.get("experiment", experiment) == experiment):
            return saved["run_id"]
    return None
