"""Teacher outputs computed once (`teacher.outputs=cached`) and read back per batch.

Every run of one teacher over one training set recomputes the same teacher forwards. With
`teacher.outputs=cached` the first run that needs them makes one eval-mode pass over the train
set, at the training precision, and stores exactly what the run's loss declares it reads from the
teacher (`DistillationLoss.cached_teacher_reads`, a `TeacherReads`); the store knows no loss by
name. The seed families declare:

- `kd` (classifiers): the logits, fp32, one row per example;
- `fdd` (`space=hidden`): the hidden states of the mapped teacher layers at every real token, or
  at the first token only with `tokens=cls`; `space=head`: the first token (the head pools it);
- `codir`: each mapped layer's hidden states pooled per example (`pooling`), fp32;
- `minilm`: the query, key and value projections of the teacher block it reads, at every real
  token (the inputs of the attention kernel, the size of hidden states), captured by forward
  hooks during the pass; the loss recomputes distributions and relations from them exactly as
  from live projections (`losses/attention.py`). `tinybert` is refused: its official MSEs include
  padding positions, whose values depend on each batch's padding;
- causal LMs (`kd`): per response token, the top `teacher.cache_top_k` log-probabilities at the
  loss's temperature and their token ids, plus the log of the remaining mass (one tail bucket).
  The loss then computes its divergence over these k + 1 buckets (`losses/tokens.py`).
  Logit-lens `fdd` needs every mapped layer decoded over the vocabulary: it is refused.

Hidden states are stored at 16 bits: bf16 when the pass runs in bf16 (lossless), else fp16
(relative error <= 2^-11). They are handed back in the pass's dtype, padded like the batch:
`hidden_states[t]` is (B, L, d) with zeros at padding, (B, 1, d) with `tokens=cls`;
`projections[(block, name)]` is (B, L, d) with zeros at padding, stored at the pass's precision
(fp32 or bf16, lossless), because scores are products of two projections and fp16 rounding of
both would set a floor under terms that a student copied from the teacher drives towards 0 (on
the tiny test models, TinyBERT's score MSE read 6.6e-5 from fp16 projections against 9.1e-8
live); CoDIR's
pooled vector comes back constant over the batch's tokens, so its masked mean (or first token)
is the stored vector and the loss reads it as it reads live hidden states.

Storage: one flat raw file per stored field (`<field>.bin`, examples' rows back to back, no
padding) with an offsets index, and `manifest.json` holding the key, dtypes, shapes and byte
sizes. Files are opened with `torch.from_file` (a memory map): a batch reads only its rows, the
page cache is shared by parallel trials, and bf16 is supported (numpy memmaps are not); the pass
streams each batch to disk, so building needs no memory for the whole set. The store lives next
to the fine-tuned teacher (`<teacher cache>/outputs/<hash of key>`), is built under a file lock
in a `.partial` folder renamed into place when complete, and is checked against its manifest on
opening: a missing manifest, a mismatched key or a file of the wrong size is rebuilt, with a
warning saying why.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch.utils.data import DataLoader

from kdsuite.identity import key_hash
from kdsuite.losses.attention import ProjectionCapture
from kdsuite.losses.pooling import pool
from kdsuite.losses.teacher_reads import TeacherReads
from kdsuite.losses.tokens import TopKLogProbs, response_positions
from kdsuite.trainer import model_inputs, training_dtype

log = logging.getLogger(__name__)

OUTPUT_MODES = ("live", "cached")
STORE_FORMAT = 1  # bump when what is stored, or how, changes
MANIFEST = "manifest.json"


OutputSpec = TeacherReads  # what the store holds for a loss: what the loss declares it reads


def output_spec(cfg, loss) -> OutputSpec | None:
    """The outputs `loss` reads under `teacher.outputs=cached`, as the loss declares them
    (`DistillationLoss.cached_teacher_reads`); None when live, or when the loss reads no teacher.
    A loss whose reads the store cannot hold raises, naming itself and the setting."""
    mode = cfg.teacher.get("outputs", "live")
    if mode not in OUTPUT_MODES:
        raise ValueError(f"teacher.outputs={mode!r} is not one of {list(OUTPUT_MODES)}")
    if mode == "live" or not loss.needs_teacher:
        return None
    return loss.cached_teacher_reads(cfg.teacher.get("cache_top_k"))


def tokens_fingerprint(train_set) -> str:
    """sha256 of the tokenised training set (ids, and token labels where they select responses)."""
    digest = hashlib.sha256()
    columns = ["input_ids"] + (["labels"] if "labels" in train_set.column_names else [])
    for column in columns:
        for row in train_set[column]:
            digest.update(json.dumps(row).encode())
    return digest.hexdigest()


def store_key(teacher_key: dict, spec: OutputSpec, train_set, max_seq_length: int, dtype: torch.dtype) -> dict:
    """Everything the stored outputs depend on: the teacher, the tokenised rows, what is stored
    and the precision of the pass."""
    key = {
        "format": STORE_FORMAT,
        "teacher": teacher_key,
        "rows": len(train_set),
        "max_seq_length": max_seq_length,
        "tokens_sha256": tokens_fingerprint(train_set),
        "spec": asdict(spec),
        "precision": str(dtype),
    }
    return json.loads(json.dumps(key))  # as the manifest will hold it (tuples become lists)


def sixteen_bit(hidden: torch.Tensor, layer: int) -> torch.Tensor:
    """Hidden states for storage: bf16 stays bf16 (lossless), others go to fp16, refusing values
    beyond fp16's range rather than storing infinities."""
    if hidden.dtype == torch.bfloat16:
        return hidden
    stored = hidden.to(torch.float16)
    if not torch.isfinite(stored).all():
        raise ValueError(f"teacher layer {layer} has hidden states beyond fp16's range (max |h| = "
                         f"{hidden.abs().max().item():.3g}): use teacher.outputs=live, or train in bf16")
    return stored


class _FieldWriter:
    """Appends rows of one field to `<name>.bin` and remembers their count, width and dtype."""

    def __init__(self, folder: Path, name: str):
        self.path, self.name = folder / f"{name}.bin", name
        self.handle = self.path.open("wb")
        self.rows, self.shape, self.dtype = 0, None, None

    def write(self, rows: torch.Tensor) -> None:
        rows = rows.detach().cpu().contiguous()
        self.shape, self.dtype = tuple(rows.shape[1:]), rows.dtype
        self.handle.write(rows.view(torch.uint8).numpy().tobytes())
        self.rows += rows.shape[0]

    def close(self) -> dict:
        self.handle.close()
        dtype = str(self.dtype).removeprefix("torch.")
        return {"shape": [self.rows, *self.shape], "dtype": dtype, "bytes": self.path.stat().st_size}


@torch.no_grad()
def build_store(folder: Path, teacher, spec: OutputSpec, train_set, collator, batch_size: int,
                device: torch.device, dtype: torch.dtype) -> dict:
    """One eval-mode pass of `teacher` over `train_set` in example order, at `dtype`, writing
    what `spec` asks for into `folder`; returns the fields' manifest entries."""
    model = teacher if next(teacher.parameters()).dtype == dtype else copy.deepcopy(teacher)
    model.to(device, dtype=dtype).eval()
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in train_set.column_names]
    loader = DataLoader(train_set.select_columns(columns), batch_size=batch_size, shuffle=False, collate_fn=collator)
    writers: dict[str, _FieldWriter] = {}

    def write(name: str, rows: torch.Tensor) -> None:
        if name not in writers:
            writers[name] = _FieldWriter(folder, name)
        writers[name].write(rows)

    capture = None
    if spec.projections:
        capture = ProjectionCapture(model, {block for block, _ in spec.projections},
                                    sorted({name for _, name in spec.projections}))
    try:
        _pass(loader, model, spec, device, write, capture)
    finally:
        if capture is not None:
            capture.remove()
    return {name: writer.close() for name, writer in writers.items()}


def _pass(loader, model, spec: OutputSpec, device: torch.device, write, capture: ProjectionCapture | None) -> None:
    """The teacher's forwards over `loader`, each batch's fields handed to `write(name, rows)`."""
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        out = model(**model_inputs(batch), output_hidden_states=bool(spec.hidden_layers))
        mask = batch["attention_mask"].bool()  # (B, L)
        if spec.top_k:
            if spec.top_k >= out.logits.shape[-1]:
                raise ValueError(f"teacher.cache_top_k={spec.top_k} must be below the vocabulary size "
                                 f"{out.logits.shape[-1]} (the tail bucket holds the rest)")
            positions = response_positions(batch["labels"])  # (B, L)
            log_probs = F.log_softmax(out.logits[positions].float() / spec.temperature, dim=-1)  # (N, V)
            values, indices = log_probs.topk(spec.top_k, dim=-1)  # (N, k)
            write("topk_log_probs", values)
            write("topk_ids", indices.to(torch.int32))
            write("tail_log_prob", TopKLogProbs.tail_of(values))
            write("lengths", positions.sum(dim=1))
            continue
        if spec.logits:
            write("logits", out.logits.float())  # (B, C)
        for layer in spec.hidden_layers:
            hidden = out.hidden_states[layer]  # (B, L, d)
            if spec.pooling:
                write(f"pooled_{layer}", pool(hidden.float(), mask, spec.pooling))  # (B, d)
            elif spec.tokens == "cls":
                write(f"hidden_{layer}", sixteen_bit(hidden[:, 0], layer))  # (B, d)
            else:
                write(f"hidden_{layer}", sixteen_bit(hidden[mask], layer))  # (tokens, d)
        for block, name in spec.projections:
            write(f"{name}_{block}", capture.get(block, name)[mask])  # (tokens, d), at the pass's precision
        if capture is not None:
            capture.clear()
        write("lengths", mask.sum(dim=1))


class TeacherOutputStore:
    """An opened store: `batch_outputs(batch)` gives the teacher outputs of a training batch."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        spec = manifest["key"]["spec"]
        self.spec = OutputSpec(**{**spec, "hidden_layers": tuple(spec["hidden_layers"]),
                                  "projections": tuple(tuple(entry) for entry in spec.get("projections", ()))})
        self.dtype = getattr(torch, manifest["key"]["precision"].removeprefix("torch."))
        self.fields = {name: _open_field(path, name, entry) for name, entry in manifest["fields"].items()}
        lengths = self.fields["lengths"].long()
        # rows of example i: offsets[i]:offsets[i+1]
        self.offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        """Row ids of the token-level fields for examples `index`, back to back in batch order."""
        starts, ends = self.offsets[index], self.offsets[index + 1]
        counts = ends - starts
        first_of_each = torch.cumsum(counts, 0) - counts
        return torch.repeat_interleave(starts - first_of_each, counts) + torch.arange(int(counts.sum()))

    def batch_outputs(self, batch: dict):
        """The teacher output of the batch's examples (by `example_index`), on the batch's device."""
        index = batch["example_index"].cpu().long()
        device = batch["attention_mask"].device
        if self.spec.top_k:
            counts = response_positions(batch["labels"]).sum(dim=1).cpu()
            if not torch.equal(counts, self.fields["lengths"][index].long()):
                raise RuntimeError(f"teacher output cache {self.path}: the batch's response-token counts differ "
                                   f"from the cached ones; the cache does not match this data")
            rows = self._rows(index)
            logits = TopKLogProbs(
                self.fields["topk_log_probs"][rows].to(device),
                self.fields["topk_ids"][rows].to(device).long(),
                self.fields["tail_log_prob"][rows].to(device),
            )
            return CachedTeacherOutput(logits, CachedLayers({}))
        mask = batch["attention_mask"].bool()  # (B, L)
        expected = self.fields["lengths"][index].to(device)
        if not torch.equal(mask.sum(dim=1), expected.to(mask.device).long()):
            raise RuntimeError(f"teacher output cache {self.path}: the batch's token counts differ from the "
                               f"cached ones; the cache does not match this data")
        hidden = {}
        for layer in self.spec.hidden_layers:
            if self.spec.pooling:
                pooled = self.fields[f"pooled_{layer}"][index].to(device)  # (B, d)
                hidden[layer] = pooled.unsqueeze(1).expand(-1, mask.shape[1], -1)  # (B, L, d)
            elif self.spec.tokens == "cls":
                hidden[layer] = self.fields[f"hidden_{layer}"][index].to(device, self.dtype).unsqueeze(1)  # (B, 1, d)
            else:
                hidden[layer] = self._padded(f"hidden_{layer}", index, mask)  # (B, L, d)
        projections = {(block, name): self._padded(f"{name}_{block}", index, mask)  # (B, L, d)
                       for block, name in self.spec.projections}
        logits = self.fields["logits"][index].to(device) if self.spec.logits else None
        return CachedTeacherOutput(logits, CachedLayers(hidden), projections)

    def _padded(self, name: str, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A token-level field of examples `index`, padded like the batch: (B, L, d), zeros at padding."""
        rows = self.fields[name][self._rows(index)].to(mask.device, self.dtype)  # (tokens, d)
        padded = rows.new_zeros(*mask.shape, rows.shape[-1])
        padded[mask] = rows
        return padded


@dataclass
class CachedTeacherOutput:
    """Shaped like a Hugging Face model output for what the losses read."""

    logits: torch.Tensor | TopKLogProbs | None
    hidden_states: "CachedLayers"
    projections: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # (block, name) -> (B, L, d)


class CachedLayers(dict):
    """`hidden_states[t]` for the cached teacher layers; any other layer is a clear error."""

    def __missing__(self, layer):
        raise KeyError(f"teacher layer {layer} is not in the teacher-output cache (it holds layers {sorted(self)})")


def _open_field(path: Path, name: str, entry: dict) -> torch.Tensor:
    dtype = getattr(torch, entry["dtype"])
    shape = entry["shape"]
    count = 1
    for size in shape:
        count *= size
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.from_file(str(path / f"{name}.bin"), shared=False, size=count, dtype=dtype).view(shape)


def check_store(path: Path, key: dict) -> tuple[dict | None, str]:
    """(manifest, "") when the store at `path` is complete and made for `key`, else (None, why)."""
    manifest_path = path / MANIFEST
    if not path.exists():
        return None, "not built yet"
    if not manifest_path.is_file():
        return None, "its manifest is missing (a build that did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        return None, f"its manifest is not valid JSON ({error})"
    if manifest.get("key") != key:
        return None, "it was built for another teacher, data, layer set or precision"
    for name, entry in manifest.get("fields", {}).items():
        file = path / f"{name}.bin"
        size = file.stat().st_size if file.is_file() else None
        if size != entry["bytes"]:
            return None, f"{file.name} has {size} bytes, the manifest says {entry['bytes']} (corrupt or truncated)"
    return manifest, ""


def get_or_build(run, teacher) -> TeacherOutputStore | None:
    """The run's teacher-output store (built now if missing or invalid), or None when the run
    reads its teacher live. `teacher` is the FineTunedTeacher from the teacher cache."""
    spec = output_spec(run.cfg, run.loss)
    if spec is None:
        return None
    dtype = training_dtype(run.student_args)
    key = store_key(run.teacher_entry.key, spec, run.data.train_set, run.cfg.dataset.max_seq_length, dtype)
    digest = key_hash(key, 64)
    path = teacher.path / "outputs" / digest[:16]
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        manifest, problem = check_store(path, key)
        if manifest is None:
            if path.exists():
                log.warning("teacher-output cache %s is rebuilt: %s", path, problem)
                shutil.rmtree(path)
            manifest = _build(path, key, spec, run, teacher.model, dtype)
    return TeacherOutputStore(path, manifest)


def _build(path: Path, key: dict, spec: OutputSpec, run, teacher, dtype: torch.dtype) -> dict:
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    started = time.perf_counter()
    fields = build_store(staging, teacher, spec, run.data.train_set, run.data.collator,
                         run.student_args.per_device_eval_batch_size, run.student_args.device, dtype)
    seconds = time.perf_counter() - started
    manifest = {"key": key, "fields": fields, "build_seconds": round(seconds, 2),
                "megabytes": round(sum(entry["bytes"] for entry in fields.values()) / 2**20, 2)}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    staging.rename(path)
    log.info("teacher-output cache %s built in %.1f s (%.1f MB)", path, seconds, manifest["megabytes"])
    return manifest
