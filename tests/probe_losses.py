"""A loss that records where it trains (for tests of how sweep trials are launched)."""

import json
import os
import time

import torch

from kdsuite.losses.kd import KDLoss


class ProbeKDLoss(KDLoss):
    """KD that appends {pid, torch threads, time} to the file named by $KDSUITE_PROBE_FILE at its
    first training step (a run also builds its loss once before the data, to check the settings)."""

    recorded = False

    def forward(self, student_out, teacher_out, batch):
        if not self.recorded:
            self.recorded = True
            record = {"pid": os.getpid(), "threads": torch.get_num_threads(), "time": time.time()}
            with open(os.environ["KDSUITE_PROBE_FILE"], "a") as handle:
                handle.write(json.dumps(record) + "\n")
        return super().forward(student_out, teacher_out, batch)
