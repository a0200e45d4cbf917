"""A loss that records where it trains (for tests of how sweep trials are launched)."""

import json
import os
import time

import torch

from kdsuite.losses.kd import KDLoss

WAIT_TIMEOUT_S = 240


class ProbeKDLoss(KDLoss):
    """KD that appends {pid, torch threads, time} to the file named by $KDSUITE_PROBE_FILE at its
    first training step (a run also builds its loss once before the data, to check the settings,
    so the constructor is not the place). With $KDSUITE_PROBE_TOGETHER=N it then waits until N
    trials have written theirs, and raises after WAIT_TIMEOUT_S: the trial fails unless N trials
    are running at the same time."""

    recorded = False

    def forward(self, student_out, teacher_out, batch):
        if not self.recorded:
            self.recorded = True
            self.record_and_wait()
        return super().forward(student_out, teacher_out, batch)

    @staticmethod
    def record_and_wait() -> None:
        path = os.environ["KDSUITE_PROBE_FILE"]
        record = {"pid": os.getpid(), "threads": torch.get_num_threads(), "time": time.time()}
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        together = int(os.environ.get("KDSUITE_PROBE_TOGETHER", "1"))
        deadline = time.time() + WAIT_TIMEOUT_S
        while len(open(path).read().splitlines()) < together:
            if time.time() > deadline:
                raise RuntimeError(f"{together} trials were not running at the same time")
            time.sleep(0.2)
