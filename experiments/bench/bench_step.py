"""Time one distillation training step per loss family, live and cached, interleaved, in one process.

    python experiments/bench/bench_step.py --student bert2l --batch 32 --seq-len 128 --steps 20
    python experiments/bench/bench_step.py --random-weights ...   # same architecture, random weights
    python experiments/bench/bench_step.py --teacher bert_base --random-weights \
        --teacher-override num_hidden_layers=12 --student bert6l --batch 128   # GPU: BERT-base-shaped

What is timed is what `run.py` runs. Every trainer is assembled by `build_run`, `build_student` and
`build_trainer`, then prepared by the Trainer's own `_prepare_for_training` (accelerate's
`prepare`: device placement, the mixed-precision autocast around the student's forward, the
optimizer wrapper, the scheduler). One step is `training_step` (forward(s), loss, backward), the
gradient clipping of `max_grad_norm`, the optimizer and scheduler steps, as in the Trainer's loop,
at the precision the run uses (`trainer.bf16=auto`). "teacher forward alone" is the live kd
trainer's own `teacher_forward` (the teacher cast to the training precision). ideal = ce step +
teacher forward alone: a live distillation step should cost at most ~1.05x that; a cached step
(`teacher.outputs=cached`, no teacher forward) at most ~1.10x the ce step.

Rows: every loss family whose YAML declares the classification track (`kdsuite.loss_families`),
live and cached (`--variants` picks some); a cached row whose loss refuses the store is left out,
with the loss's reason. Cached rows read a store built over the bench's own batch (same shapes as timed); the one-time
build cost on the task's real training set (seconds, MB) is measured separately and reported below
the table. Steps are interleaved variant by variant so drift hits them all alike.

Achieved TFLOP/s: FLOPs of one step, student and teacher, counted by `torch.utils.flop_counter`,
over the median time; on a GPU also the MFU against the device's dense bf16 peak (none is known
for a CPU). Memory on a GPU: peak allocated during the step; on CPU: each variant runs alone in a
fresh process (`--memory-of`) and its peak RSS over a few steps minus the RSS before them.

On a CPU the trainers keep freed memory in the process's heap (`kdsuite.host_memory`), as every
CPU run does; `--malloc glibc` times glibc's defaults instead (its own section).

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
from pathlib import Path

import datasets
import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from kdsuite import models
from kdsuite.loss_families import families
from kdsuite.reports.markdown import markdown_table
from kdsuite.reports.results_sections import write_section
from kdsuite.run.assembly import build_run, build_student, build_trainer
from kdsuite.step_timing import device_label, make_batch, prepare, timed, train_step
from kdsuite.teacher import outputs as teacher_outputs
from kdsuite.teacher.cache import FineTunedTeacher
from kdsuite.trainer import model_inputs, resolve_bf16

CONF = Path(__file__).resolve().parents[2] / "conf"
# The rows: every loss family of the classification track (the bench's task is RTE), from the
# loss YAMLs (`kdsuite.loss_families`), live, and each one but ce also reading the teacher-output
# store. Bench-specific, and so kept here: ce is the reference row (it reads no teacher, so it has
# no cached row), the "(cached)" labels, and "teacher forward alone" (the ideal's other half).
REFERENCE = "ce"
FAMILIES = families("classification")
VARIANTS = {  # row label: (loss, teacher.outputs)
    **{loss: (loss, "live") for loss in FAMILIES},
    **{f"{loss} (cached)": (loss, "cached") for loss in FAMILIES if loss != REFERENCE},
}
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a substring of the device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10G": 125.0, "RTX 4090": 165.0}


def compose_run(args, loss: str, outputs: str, out_dir: Path):
    overrides = [f"teacher={args.teacher}", f"student={args.student}", "dataset=rte", f"loss={loss}",
                 f"teacher.outputs={outputs}", f"trainer.per_device_train_batch_size={args.batch}",
                 f"trainer.per_device_eval_batch_size={args.batch}", "trainer.max_steps=1000",
                 f"cache_dir={out_dir / 'cache'}", f"output_dir={out_dir / 'runs' / loss}"]
    overrides += [f"+teacher.config_overrides.{item}" for item in args.teacher_override]
    if args.random_weights:
        overrides.append("teacher.random_init=true")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return build_run(compose("config", overrides=overrides))


def bench_store(run, teacher, batch: dict, folder: Path):
    """A teacher-output store over the bench batch's examples (what the cached rows read)."""
    rows = {key: value.tolist() for key, value in batch.items()}
    run.data.train_set = datasets.Dataset.from_dict(rows)
    return teacher_outputs.get_or_build(run, FineTunedTeacher(teacher, folder, {}, None, False))


def refused_by_store(error: ValueError) -> bool:
    """Whether `error` is a loss refusing `teacher.outputs=cached` (its reads are not in the store)."""
    return str(error).startswith("teacher.outputs=cached")


def build_trainers(args, out_dir: Path, batch: dict, labels=tuple(VARIANTS)):
    """One prepared trainer per variant, each assembled exactly as `run.py` assembles a run
    (RTE's data from $GLUE_DIR gives the loss its context), over one shared teacher. A cached
    variant whose loss refuses the store is left out, with the loss's own reason on stderr."""
    runs = {}
    for label in labels:
        try:
            runs[label] = compose_run(args, *VARIANTS[label], out_dir)
        except ValueError as error:
            if not (VARIANTS[label][1] == "cached" and refused_by_store(error)):
                raise
            print(f"{label}: left out ({error})", file=sys.stderr)
    first = next(iter(runs.values()))
    torch.manual_seed(0)
    teacher = models.load_pretrained_teacher(first.cfg.teacher, first.task)
    # Students first: the trainers cast the shared teacher to the training precision.
    students = {label: build_student(run, teacher) for label, run in runs.items()}
    for label, run in list(runs.items()):
        if VARIANTS[label][1] == "cached":
            try:
                run.teacher_outputs = bench_store(run, teacher, batch, out_dir / "stores" / label)
            except ValueError as error:
                if not refused_by_store(error):
                    raise
                print(f"{label}: left out ({error})", file=sys.stderr)
                del runs[label], students[label]
    trainers = {label: build_trainer(run, students[label], run.loss, teacher, run.student_args)
                for label, run in runs.items()}
    prepared = {label: (trainer, prepare(trainer)) for label, trainer in trainers.items()}
    return prepared, teacher, bool(first.cfg.teacher.random_init)


def step_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmRSS:"))


def cpu_peak_memory(args, label: str) -> float:
    """Peak RSS over warm-up + 3 steps of variant `label` alone, minus the RSS before them (MiB)."""
    batch = make_batch(30522, args.batch, args.seq_len, 2)
    prepared, _, _ = build_trainers(args, args.out / "memory", batch, (label,))
    trainer, model = prepared[label]
    batch = {key: value.to(trainer.args.device) for key, value in batch.items()}
    items = torch.tensor(args.batch, device=trainer.args.device)
    before = rss_mib()
    for _ in range(args.warmup + 3):
        train_step(trainer, model, batch, items)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before


def cpu_peaks(args, labels) -> dict[str, float]:
    """`cpu_peak_memory` of every variant, each in a fresh process (glibc set to return freed memory)."""
    peaks = {}
    for label in labels:
        command = [sys.executable, __file__, "--memory-of", label, *passed_options(args)]
        output = subprocess.run(command, check=True, capture_output=True, text=True,
                                env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}).stdout
        peaks[label] = json.loads(output.splitlines()[-1])["peak_mib"]
    return peaks


def passed_options(args) -> list[str]:
    options = ["--teacher", args.teacher, "--student", args.student, "--batch", str(args.batch),
               "--seq-len", str(args.seq_len), "--warmup", str(args.warmup), "--out", str(args.out)]
    options += [item for override in args.teacher_override for item in ("--teacher-override", override)]
    return options + (["--random-weights"] if args.random_weights else [])


def build_costs(args, losses: list[str]) -> list[list[str]]:
    """The one-time cost of each cached loss's store on the task's real training set (a loss that
    refuses the store has no row)."""
    rows = []
    for loss in losses:
        out_dir = args.out / "build"
        torch.manual_seed(0)
        try:
            run = compose_run(args, loss, "cached", out_dir)
            teacher = models.load_pretrained_teacher(run.cfg.teacher, run.task)
            store = teacher_outputs.get_or_build(run, FineTunedTeacher(teacher, out_dir / "teacher" / loss, {},
                                                                       None, False))
        except ValueError as error:
            if not refused_by_store(error):
                raise
            continue
        manifest = json.loads((store.path / teacher_outputs.MANIFEST).read_text())
        tokens = int(store.fields["lengths"].sum())
        rows.append([loss, str(len(run.data.train_set)), str(tokens), f"{manifest['build_seconds']:.1f}",
                     f"{manifest['megabytes']:.1f}", ", ".join(sorted(manifest["fields"]))])
    return rows


def device_peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="minilm")
    parser.add_argument("--student", default="bert2l")
    parser.add_argument("--teacher-override", action="append", default=[],
                        help="KEY=VALUE added to teacher.config_overrides (e.g. num_hidden_layers=12)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--no-build-cost", action="store_true", help="skip timing the stores' one-time build")
    parser.add_argument("--malloc", choices=["kept", "glibc"], default="kept",
                        help="kept: freed memory stays in the heap, as in every CPU run (kdsuite.host_memory); "
                             "glibc: glibc's defaults, to compare")
    parser.add_argument("--out", type=Path, default=Path("/tmp/kdsuite-bench"))
    parser.add_argument("--results", type=Path, help="Markdown file to write the table into (a section)")
    parser.add_argument("--section", help="added to the section's title, so that a run of some --variants "
                                          "does not replace the section of another set")
    parser.add_argument("--memory-of", choices=list(VARIANTS), help=argparse.SUPPRESS)  # internal: CPU peak
    args = parser.parse_args()
    if args.malloc == "glibc":
        os.environ["KDSUITE_MALLOC"] = "glibc"  # read by the trainers, inherited by --memory-of processes
    if args.memory_of:
        print(json.dumps({"peak_mib": round(cpu_peak_memory(args, args.memory_of), 1)}))
        return
    load_at_start = os.getloadavg()[0]
    labels = list(dict.fromkeys(["ce", "kd", *args.variants]))  # ideal needs ce and the live kd teacher

    host_batch = make_batch(30522, args.batch, args.seq_len, 2)
    prepared, teacher, random_weights = build_trainers(args, args.out / "timing", host_batch, labels)
    labels = list(prepared)  # without a cached variant its loss refused
    device = prepared["ce"][0].args.device
    batch = {key: value.to(device) for key, value in host_batch.items()}
    items = torch.tensor(args.batch, device=device)
    kd_trainer = prepared["kd"][0]

    def teacher_forward():
        kd_trainer.teacher_forward(model_inputs(batch), batch)

    steps = {label: (lambda t=trainer, m=model: train_step(t, m, batch, items))
             for label, (trainer, model) in prepared.items()}
    steps["teacher_fwd"] = teacher_forward
    times = {label: [] for label in steps}
    peaks = {}
    for step in range(args.warmup + args.steps):
        for label, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            elapsed = timed(fn, device)
            if device.type == "cuda":
                peaks[label] = torch.cuda.max_memory_allocated() / 2**20
            if step >= args.warmup:
                times[label].append(elapsed)

    median = {label: statistics.median(values) for label, values in times.items()}
    ideal = median["ce"] + median["teacher_fwd"]
    bf16 = resolve_bf16("auto")
    flops = {label: step_flops(fn) for label, fn in steps.items()}
    device_name = device_label()
    if device.type == "cuda":
        peak = device_peak_tflops(device_name)
    else:
        del prepared, steps
        peaks = cpu_peaks(args, [label for label in labels])
        peak = None
    title = f"{device_name}: {args.teacher} -> {args.student}, batch {args.batch}, length {args.seq_len}, bf16 {bf16}"
    if device.type == "cpu" and args.malloc == "glibc":
        title += ", glibc malloc defaults"
    if args.section:
        title += f", {args.section}"
    peak_kind = ("peak allocated during the step" if device.type == "cuda"
                 else "peak RSS of the variant alone, above its start")
    header = ["loss", "median step (ms)", "x ce", "x ideal (ce + teacher fwd)", f"memory (MiB, {peak_kind})"]
    header += ["TFLOP/s", f"MFU (bf16 peak {peak or 'unknown'} TFLOP/s)"]

    def row(label, name=None):
        cells = [name or label, f"{median[label] * 1000:.1f}", f"{median[label] / median['ce']:.2f}",
                 f"{median[label] / ideal:.2f}", f"{peaks[label]:.0f}" if label in peaks else ""]
        achieved = flops[label] / median[label] / 1e12
        return cells + [f"{achieved:.3g}", f"{achieved / peak:.1%}" if peak else ""]

    rows = [row(label) for label in labels]
    rows.append(row("teacher_fwd", "teacher forward alone"))
    rows[-1][2:5] = ["", "", ""]
    lines = [
        f"<!-- generated by: python experiments/bench/bench_step.py {' '.join(sys.argv[1:])} -->",
        f"Load average (1 min) at the start {load_at_start:.1f}, at the end {os.getloadavg()[0]:.1f}.",
        f"Teacher {'random' if random_weights else 'pretrained'} weights; median of {args.steps} timed steps after "
        f"{args.warmup} warm-up, variants interleaved step by step; trainers prepared by the Trainer's own "
        f"`_prepare_for_training`; ideal = ce step + teacher forward timed alone (at the training precision).",
        "",
        *markdown_table(header, rows).splitlines(),
    ]
    if not args.no_build_cost:
        lines += ["", "One-time build of the teacher-output store (`teacher.outputs=cached`) over the task's whole "
                  "training set, at the training precision, on this device:", "",
                  *markdown_table(["loss", "examples", "real tokens", "build (s)", "size (MB)", "fields"],
                                  build_costs(args, [VARIANTS[label][0] for label in labels
                                                     if VARIANTS[label][1] == "cached"])).splitlines()]
    print(title)
    print("\n".join(lines))
    if args.results:
        write_section(args.results, title, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
