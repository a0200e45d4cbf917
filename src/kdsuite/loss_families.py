"""The loss families as `conf/` declares them: which track each trains on, and which has a sweep
preset. Scripts that loop over families (the tuned comparison, the step bench) read them here, so
a new family enters them by its YAML, not by an edit to a hand-kept list.

A loss declares its tracks with a comment line in its YAML, `# tracks: classification instruction`
(a comment, like `# table_rank:`, so that neither Hydra nor the loss's constructor sees it):
`classification` is the GLUE track, `instruction` the causal-LM track (Dolly, ShareGPT). A family
that declares none is on no track here (it is left out of every loop rather than guessed). Its
sweep preset is `conf/sweep/<loss>_weights.yaml`; a preset fits a track when its loss does.
"""

from __future__ import annotations

import re
from pathlib import Path

from kdsuite.reports.markdown import LOSS_CONFIGS, family_order
from kdsuite.tracks import TRACKS  # the track names, where the tracks are defined

TRACKS_LINE = re.compile(r"^#\s*tracks:\s*([a-z ]+?)\s*(?:\(|$)", re.MULTILINE)
SWEEP_CONFIGS = LOSS_CONFIGS.parent / "sweep"  # the repository's conf/sweep
SWEEP_SUFFIX = "_weights"


def declared_tracks(loss: str, folder: Path = LOSS_CONFIGS) -> tuple[str, ...]:
    """The tracks `conf/loss/<loss>.yaml` declares (none: the file declares none). An unknown
    track name fails here, naming the file, rather than silently leaving the family out."""
    found = TRACKS_LINE.search((folder / f"{loss}.yaml").read_text())
    names = tuple(found.group(1).split()) if found else ()
    unknown = [name for name in names if name not in TRACKS]
    if unknown:
        raise ValueError(f"{folder / f'{loss}.yaml'}: unknown track(s) {unknown} in '# tracks:'; known: {list(TRACKS)}")
    return names


def families(track: str, folder: Path = LOSS_CONFIGS) -> tuple[str, ...]:
    """The loss families that train on `track`, in table order (ce, kd, fdd, codir, ...)."""
    if track not in TRACKS:
        raise ValueError(f"unknown track {track!r}: one of {list(TRACKS)}")
    return tuple(loss for loss in family_order(folder) if track in declared_tracks(loss, folder))


def swept_families(track: str, folder: Path = LOSS_CONFIGS, sweeps: Path = SWEEP_CONFIGS) -> tuple[str, ...]:
    """The families of `track` that have a weight sweep (`sweep=<loss>_weights`), in table order."""
    return tuple(loss for loss in families(track, folder) if (sweeps / f"{loss}{SWEEP_SUFFIX}.yaml").exists())
