"""Whether a folder's model weights can be loaded whole: a safetensors file whose header or data
is cut short, or a sharded checkpoint missing a shard, is found by reading headers only (no
tensor is loaded). Used before resuming from a checkpoint and before trusting a cached teacher."""

from __future__ import annotations

import json
import struct
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "adapter_model.safetensors", "adapter_model.bin")


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be loaded whole (its header or its data cut short), or None."""
    try:
        with path.open("rb") as handle:
            header_length = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(header_length))
    except (OSError, struct.error, ValueError) as error:
        return f"{path.name} unreadable ({type(error).__name__})"
    data_end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                   default=0)
    expected = 8 + header_length + data_end
    if path.stat().st_size < expected:
        return f"{path.name} truncated ({path.stat().st_size} of {expected} bytes)"
    return None


def weights_problems(folder: Path) -> list[str]:
    """What keeps the weights in `folder` from loading whole: none found, a truncated safetensors
    file, or a shard that a sharded checkpoint's index lists but the folder lacks (or holds cut
    short). Empty when the weights are whole."""
    present = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        return ["model weights (model.safetensors)"]
    problems = []
    for path in present:
        if path.suffix == ".safetensors":
            problem = safetensors_problem(path)
            if problem:
                problems.append(problem)
        elif path.name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError) as error:
                problems.append(f"{path.name} unreadable ({type(error).__name__})")
                continue
            for shard in shards:
                shard_path = folder / shard
                problem = safetensors_problem(shard_path) if shard_path.is_file() else f"shard {shard} missing"
                if problem:
                    problems.append(problem)
    return problems
