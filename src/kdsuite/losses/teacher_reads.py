"""What a loss reads from the teacher, declared by the loss itself (`cached_teacher_reads`), so
that the teacher-output store (`teacher.outputs=cached`) builds and serves exactly that, with no
list of loss names anywhere else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TeacherReads:
    """The teacher outputs a loss reads, hence what the store holds for it."""

    logits: bool = True  # classifier logits, one row per example
    hidden_layers: tuple[int, ...] = ()  # teacher layers (0 = embeddings) whose states are read
    tokens: str = "all"  # "all": every real token; "cls": the first token
    pooling: str | None = None  # "mean"/"cls": hidden states pooled per example (codir)
    top_k: int | None = None  # causal LMs: top-k log-probs per response token + tail
    temperature: float = 1.0  # causal LMs: the distribution the top-k is taken from
    # (block, "query" | "key" | "value"): the attention inputs of a block at every real token,
    # from which an attention loss (minilm) recomputes distributions and relations
    projections: tuple[tuple[int, str], ...] = ()


def not_cacheable(loss_name: str, why: str) -> ValueError:
    """The error of a loss whose reads the store cannot hold, naming the loss and the setting."""
    return ValueError(f"teacher.outputs=cached: loss={loss_name} {why}; use teacher.outputs=live")


def check_top_k(top_k) -> int:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"teacher.cache_top_k={top_k!r} must be a positive integer with teacher.outputs=cached")
    return top_k
