"""Time one distillation training step per loss family, interleaved, in one process.

    python experiments/bench_step.py --student bert2l --batch 32 --seq-len 128 --steps 20
    python experiments/bench_step.py --random-weights ...   # same architecture, random weights

For each of ce, kd, fdd, codir: the median wall time of a full training step (the
DistillationTrainer's own training_step: forward(s), loss, backward, then the optimizer step),
after warm-up, with the losses interleaved step by step so drift hits them all alike. "ideal" is
student forward+backward (the ce step) plus a teacher forward timed alone; a distillation step
should cost at most ~1.15x that (no repeated teacher work, no per-term recomputation). On CUDA
the peak memory of each loss's step is reported too, and bf16 autocast is used when supported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from kdsuite import models
from kdsuite.losses.base import LossContext
from kdsuite.mapping import validate_pairs
from kdsuite.tasks import get_task
from kdsuite.trainer import DistillationTrainer, attach_loss, resolve_bf16, training_arguments

CONF = Path(__file__).resolve().parents[1] / "conf"
LOSSES = ("ce", "kd", "fdd", "codir")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_batch(vocab: int, batch: int, length: int, num_labels: int, device) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, vocab, (batch, length), generator=generator).to(device),
        "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long, device=device),
        "labels": torch.randint(0, num_labels, (batch,), generator=generator).to(device),
        "example_index": torch.arange(batch, device=device),
    }


def build_trainers(args, out_dir: Path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"teacher={args.teacher}", f"student={args.student}", "dataset=rte"])
    task = get_task("rte")
    if args.random_weights:
        cfg.teacher.random_init = True
    torch.manual_seed(0)
    teacher = models.load_pretrained_teacher(cfg.teacher, task)
    teacher_config = teacher.config
    student_config = models.student_config(cfg.student, teacher_config)
    pairs = validate_pairs(
        instantiate(cfg.mapping)(student_config.num_hidden_layers, teacher_config.num_hidden_layers),
        student_config.num_hidden_layers, teacher_config.num_hidden_layers,
    )
    settings = {"per_device_train_batch_size": args.batch, "max_steps": 1, "bf16": "auto"}
    trainers = {}
    for name in LOSSES:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            loss_cfg = compose("config", overrides=[f"loss={name}"]).loss
        context = LossContext(task, pairs, student_config.hidden_size, teacher_config.hidden_size,
                              torch.arange(args.batch) % 2)
        loss = instantiate(loss_cfg)(context=context)
        student = models.build_student(cfg.student, teacher, teacher_config, pairs, task)
        attach_loss(student, loss, teacher)
        trainer = DistillationTrainer(
            model=student, args=training_arguments(settings, str(out_dir / name), seed=0),
            distillation_loss=loss, teacher=teacher if loss.needs_teacher else None,
        )
        trainer.create_optimizer()
        trainers[name] = trainer
    return trainers, teacher, teacher_config, bool(cfg.teacher.random_init)


def timed(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="minilm")
    parser.add_argument("--student", default="bert2l")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("/tmp/kdsuite-bench"))
    args = parser.parse_args()

    trainers, teacher, teacher_config, random_weights = build_trainers(args, args.out)
    device = trainers["ce"].args.device
    batch = make_batch(teacher_config.vocab_size, args.batch, args.seq_len, 2, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_bf16("auto"))

    def train_step(trainer):
        # num_items_in_batch as the Trainer's loop passes it (labelled examples in the step)
        trainer.training_step(trainer.model, dict(batch), num_items_in_batch=torch.tensor(args.batch, device=device))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    def teacher_forward():
        with torch.no_grad(), autocast:
            teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    times = {name: [] for name in (*LOSSES, "teacher_fwd")}
    peaks = {}
    for step in range(args.warmup + args.steps):
        for name, trainer in trainers.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            elapsed = timed(lambda: train_step(trainer), device)
            if device.type == "cuda":
                peaks[name] = torch.cuda.max_memory_allocated() / 2**20
            if step >= args.warmup:
                times[name].append(elapsed)
        elapsed = timed(teacher_forward, device)
        if step >= args.warmup:
            times["teacher_fwd"].append(elapsed)

    median = {name: statistics.median(values) for name, values in times.items()}
    ideal = median["ce"] + median["teacher_fwd"]
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device_name}; teacher {args.teacher} ({'random' if random_weights else 'pretrained'} "
          f"weights), student {args.student}, batch {args.batch}, length {args.seq_len}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, bf16 {resolve_bf16('auto')}")
    print("| loss | median step (ms) | x ce | x ideal (ce + teacher fwd) | peak memory (MiB) |")
    print("|---|---|---|---|---|")
    for name in LOSSES:
        peak = f"{peaks[name]:.0f}" if name in peaks else "n/a (CPU)"
        print(f"| {name} | {median[name] * 1000:.1f} | {median[name] / median['ce']:.2f} "
              f"| {median[name] / ideal:.2f} | {peak} |")
    print(f"| teacher forward alone | {median['teacher_fwd'] * 1000:.1f} | | | |")


if __name__ == "__main__":
    main()
