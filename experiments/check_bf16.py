"""Stop a long script whose pinned recipe trains in bf16 where bf16 would be emulated.

    python experiments/check_bf16.py trainer.num_train_epochs=3 trainer.bf16=true || exit 2

The GLUE grid, the recipe check and the tuned comparison pin `trainer.bf16=true` so that CPU runs
compute what GPU runs compute. On a CPU without bf16 instructions (AVX2 only) CPU autocast
emulates bf16, and a bert2l step took 18x its fp32 time (`experiments/bench_cpu_bf16.py`,
results/bench.md): a grid of hours would take days. `run.py` only warns about that (a single run
may want bf16 numerics anyway); these scripts, which start tens of runs, exit 2 before the first,
naming the machine. Setting ALLOW_EMULATED_BF16=1 runs them anyway.
"""

from __future__ import annotations

import os
import sys

import torch

from kdsuite.trainer import cpu_has_native_bf16


def emulated_bf16(overrides: list[str], has_gpu: bool, native_cpu_bf16: bool) -> bool:
    """Whether these run.py overrides would train in bf16 on a CPU that emulates it (the last
    `trainer.bf16=` wins, as in Hydra)."""
    values = [item.split("=", 1)[1].lower() for item in overrides if item.startswith("trainer.bf16=")]
    return bool(values) and values[-1] == "true" and not has_gpu and not native_cpu_bf16


def main() -> None:
    if not emulated_bf16(sys.argv[1:], torch.cuda.is_available(), cpu_has_native_bf16()):
        return
    message = (f"the recipe pins trainer.bf16=true, and this machine has no GPU and its CPU no bf16 "
               f"instructions ({torch.backends.cpu.get_cpu_capability()}): CPU autocast would emulate bf16, "
               "18x slower than fp32 for a bert2l step (experiments/results/bench.md). Run it on a GPU or a "
               "CPU with AVX512-BF16/AMX")
    if os.environ.get("ALLOW_EMULATED_BF16") == "1":
        print(f"warning: {message}; running anyway (ALLOW_EMULATED_BF16=1)", file=sys.stderr)
        return
    print(f"error: {message}, or set ALLOW_EMULATED_BF16=1 to run it anyway", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
