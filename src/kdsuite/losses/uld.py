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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdsuite.losses.base import DistillationLoss, LossContext, check_choice, check_temperature, check_weight
from kdsuite.losses.kd import check_divergence
from kdsuite.losses.tokens import IGNORE_INDEX, at_least_fp32, chunked_sum, response_token_ce, token_divergence
from kdsuite.losses.vocab_map import VocabMap, vocab_map

log = logging.getLogger(__name__)

ALIGNMENTS = ("offsets", "position")
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


def sorted_l1(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Per row, sum_i |sort(p_S)_i - sort(p_T)_i| with the shorter vector zero-padded: (N, V_S), (N, V_T) -> (N,)."""
    student_sorted = student_probs.sort(dim=-1, descending=True).values
    teacher_sorted = teacher_probs.sort(dim=-1, descending=True).values
    shared = min(student_sorted.shape[-1], teacher_sorted.shape[-1])
    head = (student_sorted[:, :shared] - teacher_sorted[:, :shared]).abs().sum(-1)
    return head + student_sorted[:, shared:].sum(-1) + teacher_sorted[:, shared:].sum(-1)


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

    def probabilities(rows, log_scale):
        return (F.log_softmax(at_least_fp32(rows) / temperature, dim=-1) + log_scale[:, None]).exp()  # (N_c, V)

    def per_chunk(student_rows, student_scale, teacher_rows, teacher_scale, chunk_weights):
        if mode == "same_family":
            student_log = F.log_softmax(at_least_fp32(student_rows[:, :shared_ids]) / temperature, dim=-1)
            teacher_log = F.log_softmax(at_least_fp32(teacher_rows[:, :shared_ids]) / temperature, dim=-1)
            return (temperature**2 * token_divergence(teacher_log, student_log, divergence, skew) * chunk_weights).sum()[None]
        student_probs = probabilities(student_rows, student_scale)  # (N_c, V_S)
        teacher_probs = probabilities(teacher_rows, teacher_scale)  # (N_c, V_T)
        if mode == "sorted":
            return (sorted_l1(student_probs, teacher_probs) * chunk_weights).sum()[None]
        student_ids, teacher_ids = pairs.student_ids.to(student_rows.device), pairs.teacher_ids.to(student_rows.device)
        student_log = F.log_softmax(at_least_fp32(student_rows[:, student_ids]) / temperature, dim=-1)  # (N_c, M)
        teacher_log = F.log_softmax(at_least_fp32(teacher_rows[:, teacher_ids]) / temperature, dim=-1)  # (N_c, M)
        matched = temperature**2 * token_divergence(teacher_log, student_log, divergence, skew)  # (N_c,)
        student_rest = torch.ones(student_probs.shape[-1], dtype=torch.bool, device=student_rows.device)
        teacher_rest = torch.ones(teacher_probs.shape[-1], dtype=torch.bool, device=student_rows.device)
        student_rest[student_ids], teacher_rest[teacher_ids] = False, False
        rest = sorted_l1(student_probs[:, student_rest], teacher_probs[:, teacher_rest])  # (N_c,)
        return torch.stack([(matched * chunk_weights).sum(), (rest * chunk_weights).sum()])

    tensors = (student.rows, student.log_scale, teacher.rows.detach(), teacher.log_scale.detach(), weights)
    total = chunked_sum(per_chunk, tensors, chunk_size)
    if mode != "hybrid":
        return {"uld": total[0]}
    matched_weight = pairs.size / teacher.rows.shape[-1]
    return {"uld": matched_weight * total[0] + (1.0 - matched_weight) * total[1],
            "uld_matched": total[0], "uld_sorted": total[1]}


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
        if not self.is_causal_lm:
            raise ValueError(
                f"loss=uld compares next-token distributions of causal LMs; task {context.task.name!r} trains "
                f"classifiers (an encoder-only task): use loss=kd there"
            )
        check_weight("alpha", alpha)
        check_temperature(temperature)
        check_choice("alignment", alignment, ALIGNMENTS)
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
