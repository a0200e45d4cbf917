"""What a training step costs under each rollout source: a few steps of each method, then a table.

    python experiments/bench/bench_rollout_cost.py                       # SmolLM2 -> smollm2_l6 on ShareGPT
    python experiments/bench/bench_rollout_cost.py --experiment causal_smoke --set dataset.path=my.jsonl

Each row trains `--steps` optimizer steps (default 4) of `experiment=causal_real` (or the one
given) in this process, then reads its MLflow run: the wall time per step (the Trainer's
`train_summary/runtime` over the steps, first step included), and for sources that generate during
training the generation seconds per step, generated tokens per generation second and the share of
step time spent generating (`rollout/*`, the last logging window's). SeqKD's one-off generation of
the teacher's responses over the whole training set is read from its store's manifest. Nothing is
scored beyond one sampling seed on a few test prompts: this measures cost, it ranks nothing.

Rows: sft (ce), kd (forward KL), seqkd, imitkd (linear annealing, so its first steps rarely
generate), gkd at lambda 0.5 and at lambda 1 (every step generates), distillm (the adaptive
schedule starts at threshold 0: it generates only once the validation loss rises), fdd and fdd with
`rollout=student` at lambda 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import mlflow
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from kdsuite import tracking_names as names
from kdsuite.reports.markdown import write_results

ROOT = Path(__file__).resolve().parents[2]

ROWS = {
    "sft": ["loss=ce"],
    "kd": ["loss=kd"],
    "seqkd": ["loss=seqkd"],
    "imitkd": ["loss=imitkd"],
    "gkd (lambda 0.5)": ["loss=gkd"],
    "gkd (lambda 1)": ["loss=gkd", "rollout.lambda=1"],
    "distillm": ["loss=distillm"],
    "fdd": ["loss=fdd", "mapping=fdd_uniform"],
    "fdd, rollout=student (lambda 1)": ["loss=fdd", "mapping=fdd_uniform", "rollout=student", "rollout.lambda=1"],
}


def measure(name: str, overrides: list[str], args, work: Path) -> dict:
    from kdsuite.run import train

    settings = [f"experiment={args.experiment}", *overrides, f"trainer.max_steps={args.steps}",
                f"trainer.logging_steps={args.steps}", "dataset.generation.n_seeds=1",
                "dataset.generation.max_examples=4", f"seed={args.seed}", *args.set]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=settings)
    slug = "".join(c if c.isalnum() else "_" for c in name)
    with open_dict(cfg):
        cfg.output_dir = str(work / "runs" / slug)
        cfg.tracking.uri = args.tracking_uri
        cfg.tracking.experiment = "rollout_cost"
        cfg.tracking.tags = {"row": name}
        if args.cache_dir:
            cfg.cache_dir = args.cache_dir
    started = time.perf_counter()
    train(cfg)
    client = mlflow.MlflowClient(args.tracking_uri)
    experiment = client.get_experiment_by_name("rollout_cost")
    [run] = client.search_runs([experiment.experiment_id],
                               f"tags.row = '{name}' and tags.{names.ROLE} = '{names.STUDENT}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    metrics = run.data.metrics
    row = {"row": name, "source": cfg.rollout.source, "steps": args.steps,
           "seconds_per_step": metrics["train_summary/runtime"] / args.steps,
           "generation_seconds_per_step": metrics.get("rollout/seconds_per_step"),
           "tokens_per_second": metrics.get("rollout/tokens_per_second"),
           "time_fraction": metrics.get("rollout/time_fraction"),
           "wall_seconds": time.perf_counter() - started}
    if cfg.rollout.source == "teacher":
        manifests = sorted(Path(cfg.cache_dir).expanduser().glob("teachers/*/generations/*/manifest.json"),
                           key=lambda path: path.stat().st_mtime)
        if manifests:
            manifest = json.loads(manifests[-1].read_text())
            row["one_off_seconds"] = manifest["build_seconds"]
            row["one_off_tokens"] = manifest["generated_tokens"]
    return row


def number(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict], args) -> str:
    lines = [
        f"Cost of a training step per rollout source ({args.experiment}, {args.steps} steps per row, seed "
        f"{args.seed}, {' '.join(args.set) or 'no extra overrides'}). "
        "Measured by `experiments/bench/bench_rollout_cost.py` on this machine; seconds per step include the "
        "first step. "
        "Generation columns are the last logging window's (`rollout/*`); `-`: the source generates nothing "
        "during training.", "",
        "| row | source | s / step | generation s / step | generated tokens / s | generating share | one-off |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        one_off = (f"{row['one_off_seconds']:.1f} s, {row['one_off_tokens']} tokens"
                   if "one_off_seconds" in row else "-")
        share = "-" if row["time_fraction"] is None else f"{100 * row['time_fraction']:.0f}%"
        lines.append(f"| {row['row']} | {row['source']} | {number(row['seconds_per_step'])} | "
                     f"{number(row['generation_seconds_per_step'])} | {number(row['tokens_per_second'], 0)} | "
                     f"{share} | {one_off} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="causal_real")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help=f"a subset of {list(ROWS)}")
    parser.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides for every row")
    parser.add_argument("--tracking-uri", default=None, help="default: a SQLite file in a temporary folder")
    parser.add_argument("--cache-dir", default=None, help="default: the config's cache_dir")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "rollout_cost.md"))
    args = parser.parse_args()
    unknown = [row for row in args.rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; they are {list(ROWS)}")
    work = Path(tempfile.mkdtemp(prefix="causal_onpolicy_"))
    args.tracking_uri = args.tracking_uri or f"sqlite:///{work / 'mlflow.db'}"
    rows = []
    for name in args.rows:
        print(f"[causal_onpolicy] {time.strftime('%H:%M:%S')} {name}", flush=True)
        rows.append(measure(name, ROWS[name], args, work))
        # written after every row, below the file's hand-written reading: a cut-off run keeps its rows
        write_results(Path(args.out), table(rows, args), command="python " + " ".join(sys.argv))
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
