"""Response-token arithmetic for causal LMs: which positions count, token cross-entropy, the KD
divergences over the vocabulary, and chunked sums that keep memory bounded.

Positions. Logits (and hidden states) at position i predict token i + 1, so position i counts
when `labels[i + 1]` is a response token (not -100). Every causal term is a mean over the counted
positions of the micro-batch (a token mean, as SFT losses are), which is also what the Trainer's
`num_items_in_batch` counts under gradient accumulation.

Memory. A vocabulary can hold 150k entries; K paired layers x N tokens x V in fp32 does not fit.
`chunked_sum` evaluates a per-token function on chunks of tokens under activation checkpointing:
the forward keeps only each chunk's inputs and its scalar result, the backward recomputes one
chunk at a time, so peak memory grows with `chunk_size x V`, not with `N x V`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kdsuite.tracks.base import IGNORE_INDEX

DIVERGENCES = ("forward_kl", "reverse_kl", "skew_kl", "skew_reverse_kl", "jsd")


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32 (vocabulary-wide softmaxes need it); fp32/fp64 stay as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def response_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: positions whose next token is a response token."""
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return positions


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """(N,) the response tokens, in the order `response_positions` selects their predictors."""
    return labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]


def response_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SFT loss: cross-entropy of the response tokens, mean over them (fp32)."""
    positions = response_positions(labels)
    if not positions.any():
        return logits.sum() * 0.0  # a batch without response tokens contributes nothing
    return F.cross_entropy(at_least_fp32(logits[positions]), next_token_targets(labels))


def token_divergence(
    teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor, divergence: str, skew: float = 0.1,
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-token divergence between teacher p and student q, summed over the vocabulary: (N, V) -> (N,).

    forward_kl:      KL(p || q)
    reverse_kl:      KL(q || p)
    skew_kl:         KL(p || a*p + (1-a)*q), a = skew (DistiLLM, Ko et al. 2024, "SKL")
    skew_reverse_kl: KL(q || a*q + (1-a)*p), a = skew (DistiLLM's "SRKL": the mixture leans on the
                     teacher, as `skewed_reverse_kl` in its official `distillm/losses.py` does)
    jsd:             generalized JSD (GKD, Agarwal et al. 2024), in TRL's current convention
                     JSD(beta) = beta * KL(p || M) + (1-beta) * KL(q || M), M = beta*p + (1-beta)*q.

    JSD's ends. The mixture formula is 0 at beta = 0 and at beta = 1 (M equals one side, whose
    weight is 0), and near the ends JSD(beta) ~ beta * KL(p || q) and ~ (1-beta) * KL(q || p). As
    TRL's `generalized_jsd_loss` does, beta = 0 is defined as forward_kl and beta = 1 as
    reverse_kl: the divergence the normalised JSD(beta)/beta, resp. JSD(beta)/(1-beta), tends to.
    The loss is therefore continuous in direction but not in scale at the two ends (a sweep over
    beta that reaches 0 or 1 jumps by a factor of about 1/beta there).
    Mixtures are taken in log space (logaddexp), exact in float64 and stable in fp32.
    """
    p_log, q_log = teacher_log_probs, student_log_probs
    if divergence == "forward_kl" or (divergence == "jsd" and beta == 0.0):
        return (p_log.exp() * (p_log - q_log)).sum(-1)
    if divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
        return (q_log.exp() * (q_log - p_log)).sum(-1)
    if divergence == "skew_kl":
        mixture_log = torch.logaddexp(p_log + math.log(skew), q_log + math.log1p(-skew))
        return (p_log.exp() * (p_log - mixture_log)).sum(-1)
    if divergence == "skew_reverse_kl":
        mixture_log = torch.logaddexp(q_log + math.log(skew), p_log + math.log1p(-skew))
        return (q_log.exp() * (q_log - mixture_log)).sum(-1)
    if divergence == "jsd":
        mixture_log = torch.logaddexp(p_log + math.log(beta), q_log + math.log1p(-beta))
        to_teacher = (p_log.exp() * (p_log - mixture_log)).sum(-1)
        to_student = (q_log.exp() * (q_log - mixture_log)).sum(-1)
        return beta * to_teacher + (1.0 - beta) * to_student
    raise ValueError(f"loss.divergence={divergence!r} is not one of {list(DIVERGENCES)}")


def chunked_sum(
    function: Callable[..., torch.Tensor], tensors: tuple[torch.Tensor, ...], chunk_size: int
) -> torch.Tensor:
    """`sum over chunks of function(*chunk)` where chunks split every tensor along dim 0.

    `function` returns a tensor of sums (any fixed shape). Under autograd each chunk is
    checkpointed, so only one chunk's intermediates (e.g. its N_c x V log-probabilities) are
    alive at a time, in the forward and in the backward.
    """
    if chunk_size < 1:
        raise ValueError(f"loss.chunk_size={chunk_size} must be >= 1")
    total = None
    for start in range(0, tensors[0].shape[0], chunk_size):
        chunk = tuple(tensor[start:start + chunk_size] for tensor in tensors)
        if torch.is_grad_enabled() and any(tensor.requires_grad for tensor in chunk):
            value = checkpoint(function, *chunk, use_reentrant=False)
        else:
            value = function(*chunk)
        total = value if total is None else total + value
    return total


@dataclass
class TopKLogProbs:
    """A teacher distribution kept as its top k tokens plus one tail bucket, per response token.

    `log_probs` (N, k) are the k largest log-probabilities (at the loss's temperature), `ids`
    (N, k) their tokens, `tail` (N,) the log of the mass of all other tokens. Rows are the
    response tokens of the batch in `response_positions` order. Divergences against it are
    taken over the k + 1 buckets, the student's tail being its mass outside the k ids.
    """

    log_probs: torch.Tensor
    ids: torch.Tensor
    tail: torch.Tensor

    @staticmethod
    def tail_of(top_log_probs: torch.Tensor) -> torch.Tensor:
        """log(1 - sum exp(top_log_probs)) per row, clamped at the smallest positive fp32."""
        kept = torch.logsumexp(at_least_fp32(top_log_probs), dim=-1)  # (N,)
        return torch.log((-torch.expm1(kept)).clamp(min=torch.finfo(torch.float32).tiny))

    def buckets(self) -> torch.Tensor:
        """(N, k + 1) log-probabilities of the top-k buckets and the tail."""
        return torch.cat([at_least_fp32(self.log_probs), at_least_fp32(self.tail).unsqueeze(-1)], dim=-1)


def bucket_log_probs(log_probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(N, V) log-probabilities -> (N, k + 1): those of `ids` (N, k), then the log of the rest."""
    top = log_probs.gather(-1, ids)  # (N, k)
    rest = log_probs.scatter(-1, ids, float("-inf"))  # (N, V), the top-k masked out
    return torch.cat([top, torch.logsumexp(rest, dim=-1, keepdim=True)], dim=-1)


def causal_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    divergence: str,
    temperature: float,
    skew: float,
    chunk_size: int,
    beta: float = 0.5,
) -> torch.Tensor:
    """`T^2 * mean over response tokens of D(softmax(z_T/T), softmax(z_S/T))`, in fp32 chunks
    (`skew` and `beta` parametrise the skew divergences and the JSD, see `token_divergence`)."""
    positions = response_positions(labels)
    count = int(positions.sum())
    if count == 0:
        return student_logits.sum() * 0.0
    if isinstance(teacher_logits, TopKLogProbs):
        return temperature**2 * topk_kd_sum(student_logits[positions], teacher_logits, divergence, temperature,
                                            skew, chunk_size, beta) / count
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student predicts {student_logits.shape[-1]} tokens, the teacher {teacher_logits.shape[-1]}: "
            f"token-level KD needs one shared vocabulary"
        )

    def per_chunk(student_chunk: torch.Tensor, teacher_chunk: torch.Tensor) -> torch.Tensor:
        student_log = F.log_softmax(at_least_fp32(student_chunk) / temperature, dim=-1)  # (N_c, V)
        teacher_log = F.log_softmax(at_least_fp32(teacher_chunk) / temperature, dim=-1)  # (N_c, V)
        return token_divergence(teacher_log, student_log, divergence, skew, beta).sum()

    total = chunked_sum(per_chunk, (student_logits[positions], teacher_logits[positions].detach()), chunk_size)
    return temperature**2 * total / count


def topk_kd_sum(
    student_logits: torch.Tensor, teacher: TopKLogProbs, divergence: str, temperature: float, skew: float,
    chunk_size: int, beta: float = 0.5,
) -> torch.Tensor:
    """Sum over response tokens of D(teacher buckets, student buckets): the cached top-k teacher
    (`TopKLogProbs`, N rows) against the student's (N, V) logits, grouped into the same k + 1
    buckets; fp32, in chunks."""

    def per_chunk(student_chunk, ids_chunk, teacher_chunk):
        student_log = F.log_softmax(at_least_fp32(student_chunk) / temperature, dim=-1)  # (N_c, V)
        return token_divergence(teacher_chunk, bucket_log_probs(student_log, ids_chunk), divergence, skew, beta).sum()

    return chunked_sum(per_chunk, (student_logits, teacher.ids, teacher.buckets()), chunk_size)
