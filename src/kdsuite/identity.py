"""One way to say which config something was made from: a sha256 over the config as canonical
JSON, less a named set of keys that do not change the thing identified.

Four things are identified by a config, each with its own exclusion set:

- a run's folder (`RUN`): what is trained; a folder records this identity and refuses to serve a
  config with another one (`kdsuite.run.run_folder`);
- a sweep's Optuna study (`STUDY`): what every trial shares, so that two sweeps that differ in
  anything else never share a study;
- a fine-tuned teacher (`kdsuite.teacher.cache`) and a teacher-output store
  (`kdsuite.teacher.outputs`) hash keys they build themselves (`key_hash`), from the teacher's
  settings and the digest of the data rows they were made from.

Exclusions are dotted keys; a key that is absent is skipped.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

# Where results go, where caches live, how the run is resumed or saved, a sweep's bookkeeping, and
# where the data sits (the run's identity holds the digest of its rows instead): none of them
# changes the trained student. `save_student` is here so that a run killed without it and resumed
# with it finds its own checkpoints. `dataset.track` follows from `dataset.name`; leaving it out
# keeps the identities of runs and studies made before the key existed.
RUN = ("resume", "tracking", "cache_dir", "output_dir", "optuna", "hydra", "save_student",
       "dataset.data_dir", "dataset.path", "dataset.track")
# A study is shared by machines whose data sits in different folders; its trials vary the swept keys.
STUDY = ("hydra", "tracking", "cache_dir", "output_dir", "resume", "optuna", "save_student", "dataset.data_dir",
         "dataset.track")


def key_hash(described: Any, length: int = 16) -> str:
    """The first `length` hex digits of sha256 over `described` as canonical JSON (sorted keys,
    no spaces; values JSON cannot hold are written with str)."""
    text = json.dumps(described, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def drop_keys(described: dict, leave_out: Iterable[str]) -> dict:
    """A copy of the plain config `described` without the dotted keys in `leave_out`."""
    kept = copy.deepcopy(described)
    for dotted in leave_out:
        *parents, leaf = dotted.split(".")
        node = kept
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return kept


def plain_config(cfg: DictConfig, leave_out_top: Iterable[str] = ("hydra",)) -> dict:
    """The resolved config as plain data, without the top-level keys `leave_out_top`, which are not
    resolved at all (a sweep's composed `hydra` node refers to values that exist only per job)."""
    skipped = set(leave_out_top)
    plain = {}
    for key in cfg:
        if key in skipped:
            continue
        value = cfg[key]
        plain[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return plain


def described_config(cfg: DictConfig | dict, leave_out: Iterable[str]) -> dict:
    """The resolved config as plain data, less `leave_out`: what an identity is computed over."""
    leave_out = tuple(leave_out)
    if isinstance(cfg, DictConfig):
        cfg = plain_config(cfg, [key for key in leave_out if "." not in key])
    return drop_keys(cfg, leave_out)


def config_identity(cfg: DictConfig | dict, leave_out: Iterable[str], length: int = 16, **extra: Any) -> str:
    """The identity of `cfg` less `leave_out`; `extra` (such as the data digest) is hashed with it
    under its own names."""
    return key_hash({**described_config(cfg, leave_out), **extra}, length)


def differing_keys(recorded: dict, current: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """`{dotted key: (recorded value, current value)}` for every leaf that differs between two plain
    configs (a key missing on one side shows as `<absent>`)."""
    absent = "<absent>"
    if not isinstance(recorded, dict) or not isinstance(current, dict):
        return {} if recorded == current else {prefix or "<root>": (recorded, current)}
    found: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(recorded) | set(current), key=str):
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in recorded or key not in current:
            found[name] = (recorded.get(key, absent), current.get(key, absent))
        else:
            found.update(differing_keys(recorded[key], current[key], name))
    return found
