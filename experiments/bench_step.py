"""Time one distillation training step per loss family, interleaved, in one process.

    python experiments/bench_step.py --student bert2l --batch 32 --seq-len 128 --steps 20
    python experiments/bench_step.py --random-weights ...   # same architecture, random weights

For each of ce, kd, fdd, codir: the median wall time of a full training step (the
DistillationTrainer's own training_step: forward(s), loss, backward, then the optimizer step),
after warm-up, with the losses interleaved step by step so drift hits them all alike. "ideal" is
student forward+backward (the ce step) plus a teacher forward timed alone; a distillation step
should cost at most ~1.15x that (no repeated teacher work, no per-term recomputation). bf16
autocast is used when the GPU supports it.

Peak memory per loss: on CUDA, the peak allocated during the loss's timed steps; on CPU, each loss
runs alone in a fresh process (`--memory-of NAME`) and the number is its peak RSS over a few
steps minus the RSS before the first one (activations, gradients and optimizer state).

`--results experiments/results/bench.md` writes the table there as a section named by device
and setting (a section with the same name is replaced, others are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from kdsuite import models
from kdsuite.reports.markdown import markdown_table
from kdsuite.run.assembly import build_run, build_student, build_trainer
from kdsuite.trainer import resolve_bf16

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


def build_trainers(args, out_dir: Path, losses=LOSSES):
    """One trainer per loss, each assembled exactly as `run.py` assembles a run (RTE's data from
    $GLUE_DIR gives the loss its context), over one shared teacher."""
    trainers, teacher = {}, None
    for name in losses:
        overrides = [f"teacher={args.teacher}", f"student={args.student}", "dataset=rte", f"loss={name}",
                     f"trainer.per_device_train_batch_size={args.batch}", "trainer.max_steps=1",
                     f"output_dir={out_dir / name}"]
        if args.random_weights:
            overrides.append("teacher.random_init=true")
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        run = build_run(cfg)
        if teacher is None:
            torch.manual_seed(0)
            teacher = models.load_pretrained_teacher(cfg.teacher, run.task)
        trainer = build_trainer(run, build_student(run, teacher), run.loss, teacher, run.student_args)
        trainer.create_optimizer()
        trainers[name] = trainer
    return trainers, teacher, teacher.config, bool(cfg.teacher.random_init)


def timed(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmRSS:"))


def cpu_peak_memory(args, name: str) -> float:
    """Peak RSS over warm-up + 3 steps of loss `name` alone, minus the RSS before them (MiB)."""
    trainers, _, teacher_config, _ = build_trainers(args, args.out, (name,))
    trainer = trainers[name]
    batch = make_batch(teacher_config.vocab_size, args.batch, args.seq_len, 2, trainer.args.device)
    before = rss_mib()
    for _ in range(args.warmup + 3):
        trainer.training_step(trainer.model, dict(batch), num_items_in_batch=torch.tensor(args.batch))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before


def cpu_peaks(args) -> dict[str, float]:
    """`cpu_peak_memory` of every loss, each in a fresh process (glibc set to return freed memory)."""
    peaks = {}
    for name in LOSSES:
        command = [sys.executable, __file__, "--memory-of", name, "--teacher", args.teacher, "--student", args.student,
                   "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--warmup", str(args.warmup),
                   "--out", str(args.out), *(["--random-weights"] if args.random_weights else [])]
        output = subprocess.run(command, check=True, capture_output=True, text=True,
                                env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}).stdout
        peaks[name] = json.loads(output.splitlines()[-1])["peak_mib"]
    return peaks


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the `## title` section of a Markdown results file."""
    text = path.read_text() if path.exists() else "# Training-step cost per loss (generated by experiments/bench_step.py)\n"
    head, *sections = text.split("\n## ")
    kept = [section for section in sections if section.split("\n", 1)[0] != title]
    path.write_text("\n## ".join([head.rstrip("\n") + "\n", *kept, f"{title}\n\n{body}"]))


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
    parser.add_argument("--results", type=Path, help="Markdown file to write the table into (a section)")
    parser.add_argument("--memory-of", choices=LOSSES, help=argparse.SUPPRESS)  # internal: CPU peak of one loss
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps({"peak_mib": round(cpu_peak_memory(args, args.memory_of), 1)}))
        return

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
    if device.type != "cuda":
        del trainers
        peaks = cpu_peaks(args)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    title = (f"{device_name}: {args.teacher} -> {args.student}, batch {args.batch}, length {args.seq_len}, "
             f"bf16 {resolve_bf16('auto')}")
    peak_kind = "peak allocated during the step" if device.type == "cuda" else "peak RSS of the loss alone, above its start"
    header = ["loss", "median step (ms)", "x ce", "x ideal (ce + teacher fwd)", f"memory (MiB, {peak_kind})"]
    rows = [[name, f"{median[name] * 1000:.1f}", f"{median[name] / median['ce']:.2f}", f"{median[name] / ideal:.2f}",
             f"{peaks[name]:.0f}"] for name in LOSSES]
    rows.append(["teacher forward alone", f"{median['teacher_fwd'] * 1000:.1f}", "", "", ""])
    lines = [
        f"<!-- generated by: python experiments/bench_step.py {' '.join(sys.argv[1:])} -->",
        f"Teacher {'random' if random_weights else 'pretrained'} weights; median of {args.steps} timed steps after "
        f"{args.warmup} warm-up, losses interleaved step by step; ideal = ce step + teacher forward timed alone.",
        "",
        *markdown_table(header, rows).splitlines(),
    ]
    print(title)
    print("\n".join(lines))
    if args.results:
        write_section(args.results, title, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
