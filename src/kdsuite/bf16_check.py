"""Stop a long script whose pinned recipe trains in bf16 where bf16 would be emulated.

    python -m kdsuite.bf16_check trainer.num_train_epochs=3 trainer.bf16=true || exit 2
    python experiments/tools/check_bf16.py ...    # the same check, as a script

The GLUE grid, the recipe check and the tuned comparison pin `trainer.bf16=true` so that CPU runs
compute what GPU runs compute. On a CPU without oneDNN bf16 kernels (AVX2 only) CPU autocast
emulates bf16, and a bert2l step took 22x its fp32 time (`experiments/bench/bench_cpu_bf16.py`,
results/bench.md): a grid of hours would take days. `run.py` only warns about that (a single run
may want bf16 numerics anyway); these scripts, which start tens of runs, exit 2 before the first,
naming the machine. Setting ALLOW_EMULATED_BF16=1 runs them anyway.

It lives in the package, not beside the scripts, so that the scripts (`experiments/grids/*.sh` run
it as `python -m kdsuite.bf16_check`) and its test import one module without a script folder on
`sys.path`.
"""

from __future__ import annotations

import os
import sys


def pins_bf16(overrides: list[str]) -> bool:
    """Whether these run.py overrides set `trainer.bf16=true` (the last setting wins, as in Hydra;
    `+`/`++` prefixes included)."""
    values = [item.lstrip("+").split("=", 1)[1].lower() for item in overrides
              if item.lstrip("+").startswith("trainer.bf16=")]
    return bool(values) and values[-1] == "true"


def emulated_bf16(overrides: list[str], has_gpu: bool, cpu_bf16_kernels: bool) -> bool:
    """Whether these overrides would train in bf16 on a CPU that has no fast bf16 kernels."""
    return pins_bf16(overrides) and not has_gpu and not cpu_bf16_kernels


def main() -> None:
    if not pins_bf16(sys.argv[1:]):  # the common case answers before torch is imported
        return
    import torch

    from kdsuite.trainer import cpu_has_bf16_kernels

    if not emulated_bf16(sys.argv[1:], torch.cuda.is_available(), cpu_has_bf16_kernels()):
        return
    message = (f"the recipe pins trainer.bf16=true, and this machine has no GPU and no bf16 kernels for its CPU "
               f"({torch.backends.cpu.get_cpu_capability()}): CPU autocast would emulate bf16, 22x slower than "
               "fp32 for a bert2l step (experiments/results/bench.md). Run it on a GPU or a CPU with AVX-512 "
               "(AVX512-BF16/AMX run bf16 natively)")
    if os.environ.get("ALLOW_EMULATED_BF16") == "1":
        print(f"warning: {message}; running anyway (ALLOW_EMULATED_BF16=1)", file=sys.stderr)
        return
    print(f"error: {message}, or set ALLOW_EMULATED_BF16=1 to run it anyway", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
