"""A real `run.py` run against its own step: training samples/s, and the fixed cost before step 1.

    python experiments/bench/bench_run.py                      # MiniLM -> bert2l kd on RTE, 40 steps, CPU
    python experiments/bench/bench_run.py --steps 200 -- teacher=bert_base teacher.random_init=true

Three processes, one after another, same settings (`trainer.eval_strategy=no`, the teacher cached
by a first warm-up run so it is not fine-tuned in the measured one):

1. `run.py` itself (through `runpy`, so Hydra, MLflow and the Trainer's loop are all there), with
   clocks attached: when the process started, when the training stack (`kdsuite.run.job`, which
   `run.py` imports as its main function starts) was imported, when each phase
   of `train` began and ended (`build_run`, `prepare_teacher`, the teacher-output store,
   `build_student`, `fit`), and the end of every optimiser step (a TrainerCallback).
   Training samples/s = samples of the steps after `--warmup` / the time between those steps' ends.
2. The bench step over the same run's batches: the trainer assembled and prepared as
   `bench_step.py` does, the first `--steps` batches of the run's own train dataloader collated
   in advance and put on the device, then `train_step` timed over them. This is the loop with
   nothing around it (no data loading, callbacks, logging, host syncs).
3. The ratio 1 / 2 (target >= 0.8) and the fixed cost, import time included.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PHASES = ("build_run", "prepare_teacher", "get_or_build", "build_student", "fit")


def clocked_run(overrides: list[str], report: Path, launched: float) -> None:
    """Child 1: `run.py overrides` with clocks; writes them to `report` as JSON."""
    started = time.time()
    from transformers import TrainerCallback

    from kdsuite.run import job
    from kdsuite.teacher import outputs as teacher_outputs
    from kdsuite.trainer import DistillationTrainer

    imported = time.time()
    phases, step_ends = [], []

    def clock(module, name):
        function = getattr(module, name)

        def timed(*args, **kwargs):
            begin = time.time()
            try:
                return function(*args, **kwargs)
            finally:
                phases.append((name, begin, time.time()))

        setattr(module, name, timed)

    for name in PHASES:
        clock(teacher_outputs if name == "get_or_build" else job, name)

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            step_ends.append(("begin", time.time()))

        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(("step", time.time()))

    original_init = DistillationTrainer.__init__

    def init_with_clock(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        step_ends.clear()  # the student's trainer is the last one built
        self.add_callback(StepClock())

    DistillationTrainer.__init__ = init_with_clock
    sys.argv = ["run.py", *overrides]
    try:
        runpy.run_path(str(REPO / "run.py"), run_name="__main__")
    except SystemExit:
        pass
    report.write_text(json.dumps({"launched": launched, "started": started, "imported": imported,
                                  "phases": phases, "steps": step_ends, "ended": time.time()}))


def bench_steps(overrides: list[str], steps: int, warmup: int, report: Path) -> None:
    """Child 2: the benches' `train_step` (`kdsuite.step_timing`) over the run's own first batches,
    pre-collated."""
    import torch
    from hydra import compose, initialize_config_dir

    from kdsuite.run.assembly import build_run, build_student, build_trainer
    from kdsuite.run.job import prepare_teacher
    from kdsuite.step_timing import prepare, train_step
    from kdsuite.teacher import outputs as teacher_outputs

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run = build_run(cfg)
    teacher = prepare_teacher(run) if run.needs_teacher else None  # from the cache the real run filled
    run.teacher_outputs = teacher_outputs.get_or_build(run, teacher) if teacher is not None else None
    torch.manual_seed(cfg.seed)
    student = build_student(run, teacher.model if teacher is not None else None)
    trainer = build_trainer(run, student, run.loss, teacher.model if teacher is not None else None, run.student_args)
    model = prepare(trainer)
    batches = []
    for batch in trainer.get_train_dataloader():
        batches.append({key: value.to(trainer.args.device) for key, value in batch.items()})
        if len(batches) == steps:
            break
    times = []
    for batch in batches:
        items = torch.tensor(len(batch["labels"]), device=trainer.args.device)
        if trainer.args.device.type == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        train_step(trainer, model, batch, items)
        if trainer.args.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - begin)
    samples = sum(len(batch["labels"]) for batch in batches[warmup:])
    report.write_text(json.dumps({"samples_per_s": samples / sum(times[warmup:]), "times": times}))


def child(mode: str, overrides: list[str], steps: int, warmup: int, report: Path) -> None:
    command = [sys.executable, __file__, "--child", mode, "--steps", str(steps), "--warmup", str(warmup),
               "--report", str(report), "--", *overrides]
    env = {**os.environ, "KDSUITE_BENCH_LAUNCHED": repr(time.time())}
    subprocess.run(command, check=True, cwd=REPO, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("/tmp/kdsuite-bench-run"))
    parser.add_argument("--results", type=Path, help="Markdown file to append the report to (a section)")
    parser.add_argument("--child", choices=("run", "bench"), help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="run.py overrides (after --)")
    args = parser.parse_args()
    if args.child == "run":
        clocked_run(args.overrides, args.report, float(os.environ["KDSUITE_BENCH_LAUNCHED"]))
        return
    if args.child == "bench":
        bench_steps(args.overrides, args.steps, args.warmup, args.report)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()[0]
    overrides = [
        "loss=kd", "teacher.finetune.max_steps=10", "trainer.eval_strategy=no",
        f"trainer.max_steps={args.steps}", f"trainer.per_device_train_batch_size={args.batch}",
        "trainer.logging_steps=10", f"cache_dir={args.out / 'cache'}",
        f"tracking.uri=sqlite:///{args.out / 'mlflow.db'}", f"hydra.run.dir={args.out / 'hydra'}",
        *args.overrides,
    ]
    # a one-step run first fills the teacher (and output-store) cache, so the measured run finds them
    child("run", [*overrides, "trainer.max_steps=1"], 1, 0, args.out / "warmup.json")
    child("run", overrides, args.steps, args.warmup, args.out / "run.json")
    child("bench", [o for o in overrides if not o.startswith("hydra.")], args.steps, args.warmup,
          args.out / "bench.json")
    run, bench = json.loads((args.out / "run.json").read_text()), json.loads((args.out / "bench.json").read_text())

    step_times = [t for kind, t in run["steps"] if kind == "step"]
    timed = step_times[args.warmup:]
    run_rate = args.batch * (len(timed) - 1) / (timed[-1] - timed[0])
    phases = {name: end - begin for name, begin, end in run["phases"]}
    first_step_begin = next(t for kind, t in run["steps"] if kind == "begin")
    fixed = first_step_begin - run["launched"]
    lines = [
        f"<!-- generated by: python experiments/bench/bench_run.py {' '.join(sys.argv[1:])} -->",
        f"Settings: {' '.join(overrides)}",
        f"Load average (1 min) at the start {load_at_start:.1f}, at the end {os.getloadavg()[0]:.1f}.",
        "",
        f"- training samples/s, real run (steps {args.warmup + 2}..{len(step_times)}, between step ends): "
        f"{run_rate:.1f}",
        f"- training samples/s, bench step over the same batches: {bench['samples_per_s']:.1f}",
        f"- ratio: {run_rate / bench['samples_per_s']:.2f} (target >= 0.8)",
        f"- fixed cost, process start to the first step: {fixed:.1f} s, of which interpreter start "
        f"{run['started'] - run['launched']:.1f} s, "
        f"import of `kdsuite.run.job` {run['imported'] - run['started']:.1f} s, "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items() if name != "fit")
        + f"; in `fit` before step 1: {first_step_begin - next(b for n, b, _ in run['phases'] if n == 'fit'):.1f} s",
        f"- after the last step to process end (final evaluation, MLflow, exit): "
        f"{run['ended'] - step_times[-1]:.1f} s",
    ]
    print("\n".join(lines))
    if args.results:
        from kdsuite.reports.results_sections import write_section
        from kdsuite.step_timing import device_label

        write_section(args.results, f"{device_label()}: a real run against its bench step (bench_run.py)",
                      "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
