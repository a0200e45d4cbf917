"""`uld`: Universal Logit Distillation (Boizard et al., 2024, "Towards Cross-Tokenizer Distillation:
the Universal Logit Distillation Loss for LLMs"), for a teacher and a student whose tokenizers
differ, with GOLD's alignment by text and hybrid loss (Patiño et al., 2025, TRL's GOLD trainer).

    L = (1 - alpha) * CE_response + alpha * L_ULD
    L_ULD = mean over examples [ mean over aligned positions k of
            sum_i | sort(p_S,k)_i - sort(p_T,k)_i | ]

with p = softmax(z / T) and sort() the probabilities in decreasing order, the shorter vocabulary
zero-padded. Sorting makes the term independent of which id a token has, so the two vocabularies
need not correspond. The reduction is the official code's (Nicolas-BZRD/llm-recipes,
`DistillationLoss.forward`): a sum over the vocabulary, a mean over an example's aligned
positions, then a mean over the batch's examples (those with at least one aligned position). It
has no T^2 factor, as the official code. CE is the student's response-token SFT loss (a token
mean, as in every causal loss here).

Aligned positions (`alignment`):
- `position`: the original ULD. The k-th response token of one side is compared with the k-th of
  the other, for k below the shorter response's length.
- `offsets` (default): by text. Response tokens are grouped where the character spans of both
  tokenizations end together (`token_alignment.align_spans`, from both tokenizers' offset
  mappings; the data carries each token's group, `align_groups` / `teacher_align_groups`). A group
  of several tokens is one unit, as GOLD's "observed" merge: the distribution predicting the
  group's first token, scaled by the probabilities the model gives the tokens actually at the
  group's later positions, p_group = p(. | prefix) * prod_{j > 1} p(x_j | x_<j). (A scalar times
  a distribution, not a product of distributions; the scale is left unnormalised as in GOLD.)

Hybrid (`hybrid=true`, GOLD's `_compute_hybrid_uld_loss`): the ids whose texts match exactly
(`vocab_map`, normalised texts) are compared directly: `divergence` (forward KL by default) times
T^2 between the two distributions restricted to the matched ids and renormalised there (the group
scale cancels). The unmatched ids of each side get the sorted L1 above. The parts are weighted as
GOLD's default: w = (matched ids) / (teacher's output size) for the matched part and 1 - w for the
sorted part; both are logged unweighted (`uld_matched`, `uld_sorted`). GOLD uses a JSD on the
matched ids; forward KL is our default, so that with identical vocabularies the hybrid is kd.

Same family: when one vocabulary extends the other (or both are equal and only the models' output
sizes differ), the shared ids are the same tokens, so the term is kd's instead: `divergence` times
T^2 over the shared ids, renormalised there, a mean over aligned positions (kd's token mean). The
log says so when the loss is built.

Choices where the paper, GOLD or the official code differ or are silent:
- Hybrid renormalisation: the matched part compares softmax(z / T) restricted to the matched ids
  and renormalised over them (a log_softmax over those columns). GOLD takes the full-vocabulary
  probabilities (group scale included) at the matched ids without renormalising and applies its
  JSD to those sub-distributions. Renormalising makes the matched part a divergence between two
  distributions (>= 0, zero only when they agree on the matched ids), makes the hybrid with one
  vocabulary exactly kd, and drops the mass each side puts outside the matched ids (which the
  sorted part sees) and the group scale (which cancels).
- `divergence` is forward_kl, reverse_kl or skew_kl (with `skew`). kd's causal losses also
  accept `jsd`, which needs a `beta` this loss does not have, and skew_reverse_kl, which the
  preset never offered; both are refused here, naming the key.
- End of sequence under `alignment=position`: the official run builds its loss with
  `skip_student_eos=True` (llm-recipes train/train_utils.py), which drops the student's last
  response token (its eos) before the k-th/k-th truncation. kdsuite keeps it: position k of the
  student is compared with position k of the teacher for k below the shorter response, eos
  included when both responses are that long, so `position` and `offsets` (where eos aligns with
  eos) cover the same tokens on one tokenizer. For responses of S (student) and T (teacher)
  tokens the official run compares min(S - 1, T) positions, kdsuite min(S, T).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdsuite.losses.base import (
    DistillationLoss,
    LossContext,
    check_choice,
    check_temperature,
    check_weight,
    require_track,
)
from kdsuite.losses.kd import check_divergence
from kdsuite.losses.tokens import (
    IGNORE_INDEX,
    at_least_fp32,
    chunked_sum,
    response_token_ce,
    token_divergence,
)
from kdsuite.losses.vocab_map import VocabMap, vocab_map

log = logging.getLogger(__name__)

ALIGNMENTS = ("offsets", "position")
DIVERGENCES = ("forward_kl", "reverse_kl", "skew_kl")  # no `beta` here, so no jsd (module docstring)
TEACHER_INPUT_KEYS = {"teacher_input_ids": "input_ids", "teacher_attention_mask": "attention_mask"}
NO_GROUP = -1


@dataclass
class GroupedSide:
    """One model's side of the aligned groups of a batch, in (example, group) order.

    `rows` (G, V) are the logits predicting each group's first token, `log_scale` (G,) the summed
    log-probabilities (at T) of the group's later tokens, `example` (G,) each group's example."""

    rows: torch.Tensor
    log_scale: torch.Tensor
    example: torch.Tensor


def response_tokens(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: token positions holding a response token (position 0 has no predictor)."""
    tokens = labels != IGNORE_INDEX
    tokens[:, 0] = False
    return tokens


def position_groups(student_labels: torch.Tensor, teacher_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The original ULD's alignment as groups: the k-th response token of each side is group k, for
    k below the shorter response; other positions get -1. (B, L_S), (B, L_T) -> same shapes."""
    student_tokens, teacher_tokens = response_tokens(student_labels), response_tokens(teacher_labels)
    shorter = torch.minimum(student_tokens.sum(1), teacher_tokens.sum(1))[:, None]  # (B, 1)

    def groups(tokens):
        rank = tokens.long().cumsum(1) - 1  # (B, L)
        return torch.where(tokens & (rank < shorter), rank, torch.full_like(rank, NO_GROUP))

    return groups(student_tokens), groups(teacher_tokens)


def group_side(logits: torch.Tensor, input_ids: torch.Tensor, groups: torch.Tensor, temperature: float) -> GroupedSide:
    """Gather one side's groups: the predictor of each group's first token and the log-probability
    scale of its later tokens (GOLD's "observed" merge). `groups` (B, L) holds each token's group
    (consecutive, numbered from 0 per example) or -1."""
    grouped = groups != NO_GROUP  # (B, L)
    previous = F.pad(groups[:, :-1], (1, 0), value=NO_GROUP)
    first = grouped & (groups != previous)  # (B, L) a group's first token
    if first[:, 0].any():
        raise ValueError("an aligned group starts at position 0, where no logit predicts it")
    later = grouped & ~first
    group_index = first.flatten().long().cumsum(0).view_as(groups) - 1  # (B, L) global group of each token
    rows = logits[:, :-1][first[:, 1:]]  # (G, V)
    later_logits = at_least_fp32(logits[:, :-1][later[:, 1:]]) / temperature  # (N_later, V)
    later_tokens = input_ids[:, 1:][later[:, 1:]]  # (N_later,)
    token_log_probs = later_logits.gather(-1, later_tokens[:, None]).squeeze(-1) - later_logits.logsumexp(-1)
    log_scale = token_log_probs.new_zeros(rows.shape[0]).index_add(0, group_index[:, 1:][later[:, 1:]], token_log_probs)
    return GroupedSide(rows, log_scale, first.nonzero()[:, 0])


class SortedL1(torch.autograd.Function):
    """`sum_r w_r * sum_i |sort(p_S,r)_i - sort(p_T,r)_i|`, the shorter row zero-padded, with
    p = softmax(z / T) * exp(scale) restricted to `student_columns` / `teacher_columns` (None: all).

    Sorting a vocabulary-wide row is ULD's cost (about 9 ms per 30k-wide row on one CPU thread,
    ten times the softmax). Autograd through `sort` under the chunks' activation checkpointing would
    sort each student row twice and keep nothing small; this function sorts each row once, in
    chunks, and keeps per student entry only the sign of its sorted difference (int8, N x V bytes):
    d/dp_i = w * sign(sort(p_S)_r - sort(p_T)_r) at the rank r of entry i (sign(p_i) past the
    shorter vocabulary), then through p = c * softmax(z / T): d/dz_j = p_j (g_j - <g, s>) / T and
    d/dlog c = <g, p>, recomputing the softmax chunk by chunk. The teacher gets no gradient.
    """

    @staticmethod
    def forward(ctx, student_rows, student_scale, teacher_rows, teacher_scale, weights, temperature,
                student_columns, teacher_columns, chunk_size):
        total = student_rows.new_zeros((), dtype=at_least_fp32(student_rows[:0]).dtype)
        width = student_rows.shape[-1] if student_columns is None else student_columns.numel()
        signs = torch.empty(student_rows.shape[0], width, dtype=torch.int8, device=student_rows.device)
        for start in range(0, student_rows.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            student_probs = _probabilities(student_rows[rows], student_scale[rows], temperature, student_columns)
            teacher_probs = _probabilities(teacher_rows[rows], teacher_scale[rows], temperature, teacher_columns)
            student_sorted, order = student_probs.sort(dim=-1, descending=True)
            teacher_sorted = teacher_probs.sort(dim=-1, descending=True).values
            shared = min(student_sorted.shape[-1], teacher_sorted.shape[-1])
            difference = student_sorted[:, :shared] - teacher_sorted[:, :shared]
            distance = (difference.abs().sum(-1) + student_sorted[:, shared:].sum(-1)
                        + teacher_sorted[:, shared:].sum(-1))
            total = total + (distance * weights[rows]).sum()
            sorted_signs = torch.cat([difference.sign(), student_sorted[:, shared:].sign()], dim=-1).to(torch.int8)
            signs[rows] = torch.empty_like(sorted_signs).scatter_(-1, order, sorted_signs)
        ctx.save_for_backward(student_rows, student_scale, weights, signs,
                              *(() if student_columns is None else (student_columns,)))
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return total

    @staticmethod
    def backward(ctx, grad_total):
        student_rows, student_scale, weights, signs, *columns = ctx.saved_tensors
        columns = columns[0] if columns else None
        grad_rows, grad_scale = torch.empty_like(student_rows), torch.empty_like(student_scale)
        for start in range(0, student_rows.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            softmax = F.softmax(at_least_fp32(student_rows[rows]) / ctx.temperature, dim=-1)  # (N_c, V)
            probs = softmax * student_scale[rows].exp()[:, None]
            upstream = signs[rows].to(softmax.dtype) * (weights[rows] * grad_total)[:, None]  # (N_c, V or |cols|)
            if columns is not None:
                upstream = softmax.new_zeros(softmax.shape).index_copy_(-1, columns, upstream)
            grad_rows[rows] = (probs * (upstream - (upstream * softmax).sum(-1, keepdim=True))
                               / ctx.temperature).to(grad_rows.dtype)
            grad_scale[rows] = (upstream * probs).sum(-1).to(grad_scale.dtype)
        return grad_rows, grad_scale, None, None, None, None, None, None, None


def _probabilities(rows: torch.Tensor, log_scale: torch.Tensor, temperature: float, columns: torch.Tensor | None):
    """softmax(z / T) * exp(scale) per row, restricted to `columns` (None: all): (N, V) -> (N, V or |columns|)."""
    probs = (F.log_softmax(at_least_fp32(rows) / temperature, dim=-1) + log_scale[:, None]).exp()
    return probs if columns is None else probs[:, columns]


def example_mean_weights(example: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(G,) weights that turn a sum over groups into a mean over each example's groups, then over
    the examples that have any: 1 / (groups of its example * examples with groups)."""
    counts = torch.bincount(example, minlength=batch_size).to(torch.float64)  # (B,)
    examples = (counts > 0).sum()
    return 1.0 / (counts[example] * examples)  # float64; cast to the computation's precision by the caller


def uld_distance(
    student: GroupedSide, teacher: GroupedSide, batch_size: int, temperature: float, mode: str = "sorted",
    pairs: VocabMap | None = None, shared_ids: int | None = None, divergence: str = "forward_kl",
    skew: float = 0.1, chunk_size: int = 256,
) -> dict[str, torch.Tensor]:
    """The distillation term over aligned groups, by `mode`:

    - `sorted`: ULD's sorted L1, per-example mean then batch mean -> {"uld"};
    - `hybrid`: T^2 * D on the ids `pairs` matches (renormalised there) and sorted L1 on the rest,
      weighted w and 1 - w with w = matched / teacher output size -> {"uld", "uld_matched", "uld_sorted"};
    - `same_family`: T^2 * D over the first `shared_ids` ids (renormalised), a mean over groups
      (kd's token mean) -> {"uld"}.
    """
    count = student.rows.shape[0]
    if count != teacher.rows.shape[0] or not torch.equal(student.example, teacher.example):
        raise ValueError(f"the two sides have different aligned groups ({count} vs {teacher.rows.shape[0]})")
    if count == 0:
        zero = student.rows.sum() * 0.0
        return {"uld": zero, **({"uld_matched": zero, "uld_sorted": zero} if mode == "hybrid" else {})}
    precision = at_least_fp32(student.rows[:0]).dtype
    if mode == "same_family":
        weights = torch.full((count,), 1.0 / count, dtype=precision, device=student.rows.device)
    else:
        weights = example_mean_weights(student.example, batch_size).to(student.rows.device, precision)

    device = student.rows.device
    teacher_rows, teacher_scale = teacher.rows.detach(), teacher.log_scale.detach()
    if mode == "sorted":
        return {"uld": SortedL1.apply(student.rows, student.log_scale, teacher_rows, teacher_scale, weights,
                                      temperature, None, None, chunk_size)}
    if mode == "same_family":
        student_ids = teacher_ids = torch.arange(shared_ids, device=device)
    else:
        student_ids, teacher_ids = pairs.student_ids.to(device), pairs.teacher_ids.to(device)

    def matched_chunk(student_rows, teacher_rows, chunk_weights):
        student_log = F.log_softmax(at_least_fp32(student_rows[:, student_ids]) / temperature, dim=-1)  # (N_c, M)
        teacher_log = F.log_softmax(at_least_fp32(teacher_rows[:, teacher_ids]) / temperature, dim=-1)  # (N_c, M)
        return (temperature**2 * token_divergence(teacher_log, student_log, divergence, skew) * chunk_weights).sum()

    matched = chunked_sum(matched_chunk, (student.rows, teacher_rows, weights), chunk_size)
    if mode == "same_family":
        return {"uld": matched}
    student_rest = _complement(student_ids, student.rows.shape[-1])
    teacher_rest = _complement(teacher_ids, teacher_rows.shape[-1])
    rest = SortedL1.apply(student.rows, student.log_scale, teacher_rows, teacher_scale, weights, temperature,
                          student_rest, teacher_rest, chunk_size)
    matched_weight = pairs.size / teacher_rows.shape[-1]
    return {"uld": matched_weight * matched + (1.0 - matched_weight) * rest, "uld_matched": matched, "uld_sorted": rest}


def _complement(ids: torch.Tensor, size: int) -> torch.Tensor:
    """The ids in 0..size-1 not in `ids`, ascending."""
    keep = torch.ones(size, dtype=torch.bool, device=ids.device)
    keep[ids] = False
    return keep.nonzero().squeeze(-1)


class ULDLoss(DistillationLoss):
    """ULD for causal LMs whose tokenizers may differ (see the module docstring).

    Defaults: `alpha = 0.6` (the official recipe's weights, CE 1 and distillation 1.5, as a convex
    combination), `T = 1` (its student and teacher temperatures), `alignment = offsets`,
    `hybrid = false`. The batch carries the teacher's own tokenization (`teacher_input_ids`,
    `teacher_attention_mask`, `teacher_labels`) and, for `alignment=offsets`, each token's group;
    without them (one tokenizer for both) the teacher reads the student's ids and positions align
    one to one.
    """

    name = "uld"
    allows_other_tokenizer = True  # the run may give the student a tokenizer of its own

    def __init__(
        self,
        context: LossContext,
        alpha: float = 0.6,
        temperature: float = 1.0,
        alignment: str = "offsets",
        hybrid: bool = False,
        divergence: str = "forward_kl",
        skew: float = 0.1,
        chunk_size: int = 256,
    ):
        super().__init__(context)
        require_track(context, "instruction",
                      "loss=uld compares next-token distributions of causal LMs; task {task!r} trains "
                      "classifiers (an encoder-only task): use loss=kd there")
        check_weight("alpha", alpha)
        check_temperature(temperature)
        check_choice("alignment", alignment, ALIGNMENTS)
        check_choice("divergence", divergence, DIVERGENCES)
        check_divergence(divergence, skew)
        if chunk_size < 1:
            raise ValueError(f"loss.chunk_size={chunk_size} must be >= 1")
        self.alpha, self.temperature, self.alignment, self.hybrid = alpha, temperature, alignment, bool(hybrid)
        self.divergence, self.skew, self.chunk_size = divergence, skew, chunk_size
        self.pairs: VocabMap | None = None
        tokenizers = getattr(context, "tokenizers", ())
        if tokenizers and tokenizers[0] is not tokenizers[1]:
            self.pairs = vocab_map(*tokenizers)
            if self.pairs.same_family_size:
                log.info("loss=uld: the student's vocabulary and the teacher's share their first %d ids (same "
                         "family): distilling with kd's %s on the shared ids instead of ULD's sorted term",
                         self.pairs.same_family_size, divergence)
            elif self.hybrid:
                log.info("loss=uld hybrid: %s", self.pairs.summary())

    @staticmethod
    def check_tokenizers(student_tokenizer, teacher_tokenizer, settings) -> None:
        """Refuse, before any work, a pair `alignment` cannot align: offsets need both tokenizers'
        offset mappings, which only fast (Rust) tokenizers give."""
        alignment = settings.get("alignment", "offsets")
        if alignment != "offsets":
            return
        for who, tokenizer in (("student", student_tokenizer), ("teacher", teacher_tokenizer)):
            if not getattr(tokenizer, "is_fast", False):
                raise ValueError(
                    f"loss.alignment=offsets aligns by both tokenizers' offset mappings, but the {who}'s tokenizer "
                    f"{tokenizer.name_or_path!r} ({type(tokenizer).__name__}) has none (not a fast tokenizer); "
                    f"student {student_tokenizer.name_or_path!r}, teacher {teacher_tokenizer.name_or_path!r}: "
                    f"use loss.alignment=position or a fast tokenizer"
                )

    def mode(self, separate_tokenizations: bool) -> str:
        if not separate_tokenizations or (self.pairs is not None and self.pairs.same_family_size):
            return "same_family"
        if self.hybrid:
            if self.pairs is None:
                raise ValueError("loss.hybrid=true needs both tokenizers to build its vocabulary map")
            return "hybrid"
        return "sorted"

    def teacher_inputs(self, batch: dict) -> dict:
        """What the teacher reads: its own tokenization when the batch carries one."""
        if "teacher_input_ids" not in batch:
            return {key: batch[key] for key in ("input_ids", "attention_mask") if key in batch}
        return {model_key: batch[key] for key, model_key in TEACHER_INPUT_KEYS.items()}

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        separate = "teacher_input_ids" in batch
        teacher_ids = batch["teacher_input_ids"] if separate else batch["input_ids"]
        teacher_labels = batch["teacher_labels"] if separate else labels
        if separate and self.alignment == "offsets":
            student_groups, teacher_groups = batch["align_groups"], batch["teacher_align_groups"]
        else:
            student_groups, teacher_groups = position_groups(labels, teacher_labels)
        mode = self.mode(separate)
        shared = None
        if mode == "same_family":
            shared = min(student_out.logits.shape[-1], teacher_out.logits.shape[-1],
                         self.pairs.same_family_size if self.pairs is not None else teacher_out.logits.shape[-1])
        student = group_side(student_out.logits, batch["input_ids"], student_groups, self.temperature)
        with torch.no_grad():
            teacher = group_side(teacher_out.logits, teacher_ids, teacher_groups, self.temperature)
        terms = uld_distance(student, teacher, labels.shape[0], self.temperature, mode, self.pairs, shared,
                             self.divergence, self.skew, self.chunk_size)
        ce = response_token_ce(student_out.logits, labels)
        responses = response_tokens(labels).sum().clamp(min=1)
        aligned = ((student_groups != NO_GROUP) & response_tokens(labels)).sum() / responses
        if "alignment_coverage" in batch:  # the data's: response characters inside groups
            terms["align_coverage"] = batch["alignment_coverage"].float().mean()
        return {"ce": ce, **terms, "aligned_frac": aligned.detach().float(),
                "loss": (1.0 - self.alpha) * ce + self.alpha * terms["uld"]}
