"""Peak memory of FDD's logit-lens terms (forward + backward), chunked vs unchunked, as the
vocabulary grows: the check that chunking keeps memory bounded.

    python experiments/bench/bench_logit_lens_memory.py                       # CPU: peak RSS
    python experiments/bench/bench_logit_lens_memory.py --device cuda         # GPU: peak allocated

Setting: a tiny GPT-2 teacher (8 blocks) and LLaMA student (4 blocks), 64 wide, with vocabulary V;
K = 4 layer pairs (fdd_uniform); B x L hidden states of which the response tokens (the last
3/4 of each sequence) count. Only the loss is measured: hidden states are random tensors (the
models' own forward, which produces B x L x V logits anyway, is not part of it). Each point runs
in a fresh process; on CPU the number is peak RSS minus the RSS just before the loss (MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from kdsuite.reports.markdown import markdown_table

PAIRS = [(1, 2), (2, 4), (3, 6), (4, 8)]


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(vocab: int, chunk_size: int, batch: int, length: int, device: str) -> dict:
    """One point, in this process: build, then run the loss forward + backward once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kdsuite.losses.logit_lens import LogitLens, logit_lens_terms

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "gpt2", n_layer=8, n_embd=64, n_head=4, vocab_size=vocab, bos_token_id=None, eos_token_id=None)).to(device)
    student = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "llama", num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, bos_token_id=None, eos_token_id=None, pad_token_id=None)).to(device)
    teacher_hidden = tuple(torch.randn(batch, length, 64, device=device) for _ in range(9))
    student_hidden = tuple(torch.randn(batch, length, 64, device=device, requires_grad=True) for _ in range(5))
    labels = torch.randint(0, vocab, (batch, length), device=device)
    labels[:, : length // 4] = -100  # the prompt
    tokens = int((labels[:, 1:] != -100).sum())
    student_lens, teacher_lens = LogitLens(student), LogitLens(teacher)
    warm_labels = labels.clone()
    warm_labels[:, : length - 2] = -100  # one response token per row: warms kernels and thread pools
    logit_lens_terms(student_lens, teacher_lens, PAIRS, student_hidden, teacher_hidden, warm_labels, 1)[0].backward()
    for hidden in student_hidden:
        hidden.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = rss_mib()
    start = time.perf_counter()
    traj, delta = logit_lens_terms(student_lens, teacher_lens, PAIRS, student_hidden, teacher_hidden, labels,
                                   chunk_size)
    (traj + delta).backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"vocab": vocab, "chunk_size": chunk_size, "tokens": tokens, "extra_peak_mib": round(peak - before, 1),
            "seconds": round(time.perf_counter() - start, 2), "traj": traj.item(), "delta": delta.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabs", nargs="+", type=int, default=[8192, 32768, 65536, 131072, 151936])
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "results" / "logit_lens_memory.md")
    parser.add_argument("--lengths", nargs="+", type=int, default=[256, 512, 1024],
                        help="sequence lengths of the second table, at --length-vocab")
    parser.add_argument("--length-vocab", type=int, default=32768)
    parser.add_argument("--point", nargs=3, type=int, help=argparse.SUPPRESS)  # internal: vocab, chunk, length
    args = parser.parse_args()
    if args.point:
        vocab, chunk_size, length = args.point
        print(json.dumps(measure(vocab, chunk_size, args.batch, length, args.device)))
        return

    def response_tokens(length: int) -> int:
        return args.batch * (length - length // 4)

    points = [(vocab, args.length) for vocab in args.vocabs] + [(args.length_vocab, n) for n in args.lengths]
    results = {}
    for vocab, length in dict.fromkeys(points):
        for chunk_size in (args.chunk_size, response_tokens(length)):  # chunked, then one chunk of every token
            command = [sys.executable, __file__, "--point", str(vocab), str(chunk_size), str(length),
                       "--batch", str(args.batch), "--device", args.device]
            # glibc returns large freed blocks to the OS only below its mmap threshold: fix it low so
            # that RSS follows live memory rather than the allocator's cache
            environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True,
                                               env=environment).stdout.splitlines()[-1])
            results[vocab, length, "whole" if chunk_size == response_tokens(length) else "chunked"] = result
            print(result, flush=True)

    def row(vocab: int, length: int) -> list[str]:
        whole, chunked = results[vocab, length, "whole"], results[vocab, length, "chunked"]
        same = all(abs(whole[k] - chunked[k]) <= 1e-4 * abs(whole[k]) for k in ("traj", "delta"))
        tokens = response_tokens(length)
        return [str(vocab), str(tokens), f"{tokens * vocab * 4 / 2**20:.0f}", str(whole["extra_peak_mib"]),
                str(chunked["extra_peak_mib"]), str(whole["seconds"]), str(chunked["seconds"]), "yes" if same else "NO"]

    header = ["vocabulary V", "response tokens N", "one (N x V) fp32 tensor, MiB", "unchunked (one chunk of N) MiB",
              f"chunked ({args.chunk_size} tokens) MiB", "unchunked s", "chunked s", "same value"]
    lines = [
        f"<!-- generated by: python experiments/bench/bench_logit_lens_memory.py {' '.join(sys.argv[1:])} -->",
        "# Logit-lens FDD: peak memory, chunked vs unchunked",
        "",
        f"Device: {args.device}. K = {len(PAIRS)} pairs, batch {args.batch}, the last 3/4 of each sequence is "
        f"the response, hidden 64; loss forward + backward once, fresh process per point, after a one-token "
        f"warm-up. Extra peak = {'peak allocated' if args.device == 'cuda' else 'peak RSS'} minus the memory "
        f"just before the loss (MiB).",
        "",
        f"## Growing vocabulary (sequence length {args.length})",
        "",
        *markdown_table(header, [row(vocab, args.length) for vocab in args.vocabs]).splitlines(),
        "",
        f"## Growing sequence (vocabulary {args.length_vocab})",
        "",
        *markdown_table(header, [row(args.length_vocab, length) for length in args.lengths]).splitlines(),
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
