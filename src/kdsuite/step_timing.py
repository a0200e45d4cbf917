"""One training step as the Trainer's loop runs it, timed: what the benches
(`experiments/bench/bench_step.py`, `bench_run.py`, `bench_cpu_bf16.py`) share. It lives in the
package so that the bench scripts import it as they import the rest of kdsuite, rather than
importing each other through `sys.path`.

`prepare` calls the Trainer's own `_prepare_for_training` through `private_api.prepare_for_training`
(a private method of transformers' Trainer, used by the benches only, never by a run): it is what
`Trainer.train` does before its loop, and timing that exact preparation is the point of the bench.
"""

from __future__ import annotations

import time

import torch

from kdsuite.private_api import prepare_for_training
from kdsuite.run.tracking import cpu_model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_batch(vocab: int, batch: int, length: int, num_labels: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, vocab, (batch, length), generator=generator),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch,), generator=generator),
        "example_index": torch.arange(batch),
    }


def prepare(trainer):
    """What `Trainer.train` does before its loop: wrap and `accelerator.prepare` the model,
    create and prepare the optimizer, create the scheduler. Returns the prepared model."""
    return prepare_for_training(trainer, trainer.args.max_steps)


def train_step(trainer, model, batch: dict, items: torch.Tensor) -> None:
    """One optimisation step as the Trainer's loop does it (no accumulation)."""
    trainer.training_step(model, dict(batch), num_items_in_batch=items)
    if trainer.args.max_grad_norm:
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    model.zero_grad(set_to_none=True)


def timed(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def device_label() -> str:
    """What a results section is named by: the GPU, or the CPU's model and torch's thread count
    (two CPUs give two sections: their numbers differ by far more than noise)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({cpu_model()}, {torch.get_num_threads()} threads)"
