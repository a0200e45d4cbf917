"""What reading attention costs a MiniLM -> bert2l training step on this CPU: hooks on the q/k/v
projections with SDPA kept (what `loss=minilm` and `loss=tinybert` do) against switching both
models to eager attention.

    python experiments/bench/bench_attention_capture.py --steps 5

Rows, timed interleaved step by step, median of `--steps` after one warm-up, one fixed batch
(batch 32, length 128, no padding), fp32, the models `run.py` builds (`build_run`, teacher MiniLM-L6
with its pretrained weights, `build_student`: bert2l from its blocks), AdamW:
- ce: student forward, task loss, backward, optimizer step (no teacher);
- ideal: ce + one teacher forward (no grad), SDPA: what a distillation step cannot go below;
- minilm v1 / v2 (hooks, SDPA): the real `MiniLMLoss`, its attention recomputed from the captured
  projections of the last blocks;
- ideal (eager + output_attentions): the ideal step with both models switched to eager attention
  and returning every layer's attention, before any loss is computed: the floor of the eager route;
- minilm v1 (eager): eager models, L_AT from the returned attentions (the eager route's own way),
  L_VR from the same hooks (eager attention returns no values).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from kdsuite import models
from kdsuite.losses.attention import ProjectionCapture, relation_log_probs, row_kl
from kdsuite.losses.minilm import MiniLMLoss
from kdsuite.run.assembly import build_run, build_student
from kdsuite.trainer import model_inputs

CONF = Path(__file__).resolve().parents[2] / "conf"


def make_batch(vocab: int, batch: int, length: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, vocab, (batch, length), generator=generator),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch,), generator=generator),
        "example_index": torch.arange(batch),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("/tmp/kdsuite-bench-attention"))
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["teacher=minilm", "student=bert2l", "dataset=rte", "loss=minilm",
                                           "trainer.bf16=false", f"cache_dir={args.out / 'cache'}",
                                           f"output_dir={args.out / 'run'}"])
    run = build_run(cfg)
    torch.manual_seed(0)
    teacher = models.load_pretrained_teacher(cfg.teacher, run.task).eval().requires_grad_(False)
    student = build_student(run, teacher).train()
    eager_teacher, eager_student = copy.deepcopy(teacher), copy.deepcopy(student)
    for model in (eager_teacher, eager_student):
        model.set_attn_implementation("eager")
    batch = make_batch(len(run.tokenizer), args.batch, args.seq_len)
    features = model_inputs(batch)

    def loss_for(version, student_model, teacher_model):
        loss = MiniLMLoss(context_of(run), version=version)
        loss.bind_models(student_model, teacher_model)
        return loss

    losses = {"v1": loss_for("v1", student, teacher), "v2": loss_for("v2", student, teacher)}
    optimizers = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (student, eager_student)}

    def finish(model, total):
        total.backward()
        optimizers[id(model)].step()
        optimizers[id(model)].zero_grad(set_to_none=True)

    def ce_step():
        finish(student, run.loss.task_loss(student(**features).logits, batch["labels"]))

    def ideal_step(model=student, teacher_model=teacher, **extra):
        out = model(**features, **extra)
        with torch.no_grad():
            teacher_model(**features, **extra)
        finish(model, run.loss.task_loss(out.logits, batch["labels"]))

    def hooks_step(version):
        out = student(**features)
        with torch.no_grad():
            teacher_out = teacher(**features)
        finish(student, losses[version](out, teacher_out, batch)["loss"])

    eager_capture = (ProjectionCapture(eager_student, [2], ("value",)),
                     ProjectionCapture(eager_teacher, [6], ("value",)))

    def eager_v1_step():
        out = eager_student(**features, output_attentions=True)
        with torch.no_grad():
            teacher_out = eager_teacher(**features, output_attentions=True)
        mask = batch["attention_mask"]
        attn = row_kl(teacher_out.attentions[-1].float().clamp_min(1e-30).log(),
                      out.attentions[-1].float().clamp_min(1e-30).log(), mask)
        heads = eager_student.config.num_attention_heads
        value = row_kl(relation_log_probs(eager_capture[1].get(6, "value"), heads, mask),
                       relation_log_probs(eager_capture[0].get(2, "value"), heads, mask), mask)
        for capture in eager_capture:
            capture.clear()
        ce = run.loss.task_loss(out.logits, batch["labels"])
        finish(eager_student, attn + value + ce)

    variants = {
        "ce (SDPA)": ce_step,
        "ideal (SDPA)": ideal_step,
        "minilm v1, hooks (SDPA)": lambda: hooks_step("v1"),
        "minilm v2, hooks (SDPA)": lambda: hooks_step("v2"),
        "ideal (eager + output_attentions)": lambda: ideal_step(eager_student, eager_teacher, output_attentions=True),
        "minilm v1, eager attentions": eager_v1_step,
    }
    times = {name: [] for name in variants}
    for step in range(args.steps + 1):
        for name, variant in variants.items():
            start = time.perf_counter()
            variant()
            if step:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    ideal = statistics.median(times["ideal (SDPA)"])
    print(f"batch {args.batch} x {args.seq_len}, fp32, {torch.get_num_threads()} threads, median of {args.steps}; "
          f"load average {load_at_start:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print("| step | median s | x ideal (SDPA) |")
    print("|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {median / ideal:.2f} |")


def context_of(run):
    from kdsuite.losses.base import LossContext

    return LossContext(task=run.task, layer_pairs=run.layer_pairs,
                       student_hidden_size=run.student_architecture.hidden_size,
                       teacher_hidden_size=run.teacher_architecture.hidden_size,
                       student_architecture=run.student_architecture,
                       teacher_architecture=run.teacher_architecture, seed=run.cfg.seed)


if __name__ == "__main__":
    main()
