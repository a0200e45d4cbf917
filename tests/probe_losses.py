"""A loss that records where it runs (for tests of how sweep trials are launched)."""

import json
import os
import time

import torch

from kdsuite.losses.kd import KDLoss


class ProbeKDLoss(KDLoss):
    """KD that appends {pid, torch threads, time} to the file named by $KDSUITE_PROBE_FILE when built."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        record = {"pid": os.getpid(), "threads": torch.get_num_threads(), "time": time.time()}
        with open(os.environ["KDSUITE_PROBE_FILE"], "a") as handle:
            handle.write(json.dumps(record) + "\n")
