"""A few CoDIR training steps, on one process or as one rank of `torchrun`, recording the memory
banks right after every update: `python ddp_codir_worker.py OUT_DIR OVERRIDE...`.

Each rank writes `OUT_DIR/hashes-rank<r>.json` (step -> sha256 of both banks, taken at the end
of the step, before any later forward could let DDP overwrite them) and, at the end,
`OUT_DIR/banks-rank<r>.pt`. The teacher is the tiny random one (seeded), not fine-tuned: what is
tested is the student's training across processes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from ddp_rank import rank_trainer
from transformers import TrainerCallback

from kdsuite import distributed


def bank_hash(loss) -> str:
    digest = hashlib.sha256()
    for bank in (loss.student_bank, loss.teacher_bank):
        digest.update(bank.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class BankRecorder(TrainerCallback):
    def __init__(self, loss, out_dir: Path):
        self.loss, self.out_dir, self.hashes = loss, out_dir, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.hashes[state.global_step] = bank_hash(self.loss)

    def on_train_end(self, args, state, control, **kwargs):
        rank = distributed.rank()
        (self.out_dir / f"hashes-rank{rank}.json").write_text(json.dumps(self.hashes))
        banks = {"student_bank": self.loss.student_bank.cpu(), "teacher_bank": self.loss.teacher_bank.cpu(),
                 "draws": self.loss.draws.cpu()}
        torch.save(banks, self.out_dir / f"banks-rank{rank}.pt")


def train_codir(out_dir: Path, overrides: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _, trainer = rank_trainer([*overrides, f"output_dir={out_dir / 'run'}"],
                              lambda run, student: [BankRecorder(run.loss, out_dir)])
    trainer.train()


if __name__ == "__main__":
    train_codir(Path(sys.argv[1]), sys.argv[2:])
