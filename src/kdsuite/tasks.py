"""The task lookup under its old name, for the scripts under `experiments/` that import it. Tasks
are described by their tracks (`kdsuite.tracks`); code in `src/` imports from there.
"""

from kdsuite.tracks import IGNORE_INDEX, get_task

__all__ = ["IGNORE_INDEX", "get_task"]
