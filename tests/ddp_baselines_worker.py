"""The encoder baselines under DDP, all in one process per rank: `python ddp_baselines_worker.py
OUT_DIR OVERRIDE...` trains each family in `FAMILIES` for a few steps and writes, per family and
rank, `OUT_DIR/<family>-rank<r>.json`: the logged terms of every step, a hash of the student's
parameters (the loss's learned parts included) after every step, and how many captured attention
projections were left after every step (0: the hooks keep nothing between steps).

The teacher is the tiny random one (seeded), not fine-tuned: what is tested is training across
processes, one torchrun launch for every family.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from ddp_rank import rank_trainer
from transformers import TrainerCallback

from kdsuite import distributed

FAMILIES = {
    "pkd": ["loss=pkd"],
    "tinybert": ["loss=tinybert", "loss.intermediate_batches=2"],  # steps 1-2 intermediate, 3 prediction
    "minilm_v1": ["loss=minilm", "loss.version=v1"],
    "minilm_v2": ["loss=minilm", "loss.version=v2"],
    "distilbert": ["loss=distilbert"],
}


def parameter_hash(model) -> str:
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Recorder(TrainerCallback):
    def __init__(self, model, loss):
        self.model, self.loss = model, loss
        self.logs, self.hashes, self.captured = [], [], []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append({key: value for key, value in (logs or {}).items() if isinstance(value, float)})

    def on_step_end(self, args, state, control, **kwargs):
        self.hashes.append(parameter_hash(self.model))
        captures = getattr(self.loss, "_captures", None) or ()
        self.captured.append(sum(len(capture.outputs) for capture in captures))


def train_family(out_dir: Path, family: str, overrides: list[str]) -> None:
    run, trainer = rank_trainer([*overrides, *FAMILIES[family], f"output_dir={out_dir / family}"],
                                lambda run, student: [Recorder(student, run.loss)])
    trainer.train()
    [recorder] = [callback for callback in trainer.callback_handler.callbacks if isinstance(callback, Recorder)]
    record = {"logs": recorder.logs, "hashes": recorder.hashes, "captured": recorder.captured,
              "pairs_used": getattr(run.loss, "pairs_used", None)}
    (out_dir / f"{family}-rank{distributed.rank()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name in FAMILIES:
        train_family(out, name, sys.argv[2:])
