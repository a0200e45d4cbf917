"""The tracks: kinds of task that share data handling, models, task loss and evaluation.

- `classification`: GLUE tasks, encoder classifiers, GLUE metrics on logits.
- `instruction`: instruction following (Dolly, ShareGPT), causal LMs, ROUGE-L of sampled responses.

A dataset config selects its track (`dataset.track`, set once in `conf/dataset/_glue.yaml` and
`_instruction.yaml`); the task it names is looked up in that track. Code outside this package asks
the task's track (`task.track`) rather than testing which track it is. A new track is a module
here implementing `base.Track`, one entry in `TRACKS`, and a base dataset YAML.
"""

from __future__ import annotations

from kdsuite.tracks.base import IGNORE_INDEX, Track
from kdsuite.tracks.classification import CLASSIFICATION, GLUE_TASKS
from kdsuite.tracks.instruction import INSTRUCTION, INSTRUCTION_TASKS
from kdsuite.tracks.specs import ClassificationTask, InstructionTask

TRACKS: dict[str, Track] = {track.name: track for track in (CLASSIFICATION, INSTRUCTION)}

__all__ = ["IGNORE_INDEX", "TRACKS", "ClassificationTask", "InstructionTask", "Track", "get_task", "get_track",
           "task_of"]


def get_track(name: str) -> Track:
    """The track named `name` (`dataset.track`), or a ValueError naming the tracks there are."""
    try:
        return TRACKS[name]
    except KeyError:
        raise ValueError(f"unknown track {name!r}: dataset.track must be one of {sorted(TRACKS)}") from None


def get_task(name: str) -> ClassificationTask | InstructionTask:
    """The spec of task `name` on whichever track has it (for callers that know only the name: a
    record's `dataset` tag), or a ValueError naming the tasks that exist."""
    for track in TRACKS.values():
        if name in track.tasks:
            return track.tasks[name]
    known = sorted(GLUE_TASKS) + sorted(INSTRUCTION_TASKS)
    raise ValueError(f"unknown task {name!r}: dataset.name must be one of {known}")


def task_of(dataset) -> ClassificationTask | InstructionTask:
    """The task a dataset config names, on the track it selects (`dataset.track`); a config
    without the key (one saved before it existed) is looked up by name alone."""
    track = dataset.get("track")
    return get_task(dataset.name) if track is None else get_track(track).task(dataset.name)
