"""A real `run.py` process stopped with SIGTERM once its first checkpoint is on disk, for the
kill-and-resume tests (test_kill_and_resume.py on GLUE, test_rollout_resume.py on the causal
track). The process runs on one thread, so an in-process run on one thread reduces its sums in the
same order and a resumed run can be compared with an uninterrupted one to the last digits."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO
from sweep_runs import sweep_env


def run_py(*overrides: str) -> list[str]:
    """`python run.py OVERRIDES` of this checkout."""
    return [sys.executable, str(REPO / "run.py"), *overrides]


def kill_at_first_checkpoint(command: list[str], cwd: Path, checkpoints: Path, pattern: str,
                             timeout: float = 300) -> str:
    """Start `command` in `cwd` (this checkout's src/ first on PYTHONPATH, one thread), poll every
    20 ms for `checkpoints.glob(pattern)`, send SIGTERM at the first hit and return the process's
    stderr. Fails if the process ends first, if no checkpoint appears within `timeout` seconds, or
    if the process still exits 0 (it finished before the signal arrived)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=sweep_env(OMP_NUM_THREADS="1"), cwd=cwd)
    deadline = time.monotonic() + timeout
    while not list(checkpoints.glob(pattern)):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode != 0, "the run finished before the signal arrived"
    return stderr


def by_step(checkpoints) -> list[Path]:
    """Checkpoint folders (`checkpoint-<step>`), oldest step first."""
    return sorted(checkpoints, key=lambda path: int(path.name.split("-")[1]))
