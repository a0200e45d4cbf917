"""`tinybert`: TinyBERT's task-specific distillation, without data augmentation (Jiao et al.,
Findings of EMNLP 2020).

    L_model = sum_m lambda_m L_layer(S_m, T_g(m))
    L_attn  = (1/h) sum_i MSE(A_i^S, A_i^T)          A_i = Q_i K_i^T / sqrt(d_k), per head i,
                                                     unnormalised (before the softmax)
    L_hidn  = MSE(H^S W_h, H^T)                      one learned W_h (d_S -> d_T) for all blocks
    L_embd  = MSE(E^S W_e, E^T)                      embedding-layer output, its own learned W_e
    L_pred  = CE(z^T / t, z^S / t) = -sum_c softmax(z^T / t)_c log softmax(z^S / t)_c

summed over the mapped pairs g(m) (the layer mapping; 12 -> 4 `uniform` gives the paper's
g(m) = 3m) for the attention and hidden terms; the embedding term pairs layer 0 with layer 0.

Stages (`stage`): the paper distils the intermediate layers first (L_attn + L_hidn + L_embd),
then the prediction layer (L_pred). `intermediate` and `prediction` run one stage for the whole
run; `both` runs them one after the other in one run: the first `intermediate_batches` training
calls of the loss (micro-batches: with gradient accumulation g, g per optimizer step) are the
intermediate stage, the rest the prediction stage. By default (`intermediate_batches: null`) the
split follows the official README's schedule, 10 intermediate epochs before 3 prediction epochs:
the first 10/13 of the run's training batches (`LossContext.training_batches`), rounded, leaving
the prediction stage at least one (a run of fewer than 2 batches is refused). A count given
explicitly must also leave the prediction stage at least one batch: a run that would never reach
it would never train the classifier on the task, and is refused before any work. The loss counts
its training calls in a persistent buffer `calls`, which is saved in checkpoints with the student
(the loss is one of its submodules), so a resumed run continues in the right stage; evaluation
calls do not count.

In MLflow every term is logged at every step, whichever stage is on: `attn`, `hidn`, `embd` and
`pred` (the inactive stage's terms computed without gradient, for monitoring), and `stage`, 0 in
the intermediate stage and 1 in the prediction stage, so its window mean is the share of
prediction-stage batches and its history shows where the switch happened.

Following the official code (huawei-noah/Pretrained-Language-Model, TinyBERT/task_distill.py):
- scores of padding keys are zeroed in both models before the MSE (the code adds the -10000
  mask, then zeroes every score <= -100); the MSE is the mean over all B x h x L x L entries,
  padding queries included, summed over the mapped pairs; the hidden and embedding MSEs are means
  over all B x L x d_T entries, padding tokens included. The official code pads every batch to
  128 tokens; this suite pads each batch to its longest example, so these means are taken over
  that length.
- the prediction term's temperature defaults to 1 (`--temperature 1.`); for regression (STS-B)
  the official prediction stage is the MSE against the gold labels, and so it is here.
- the stage losses are plain sums of their terms (all lambda_m = 1); the weights here default to 1.

Choices where paper or code are silent or differ:
- The official student shares one `fit_dense` for the embeddings and every block; the paper has a
  separate W_e, and so does this loss. W_h and W_e are `Linear(d_S, d_T)` with bias, trained with
  the student; with equal widths they start as the identity (the student copied from the teacher
  then starts with zero hidden and embedding loss), else with PyTorch's default init.
- L_pred sums over classes (the paper's CE); the official `soft_cross_entropy` also divides by the
  number of classes, a constant factor.
- Head counts must be equal (per-head score maps are compared); a mismatch is refused in the
  constructor when the context gives both architectures, else when the models are bound.
- Parameters a stage does not read (the classifier during the intermediate stage, W_h and W_e
  during the prediction stage) get a zero gradient (`attention.gradient_anchor`), for DDP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsuite.losses.attention import ProjectionCapture, gradient_anchor, scaled_dot_products
from kdsuite.losses.base import DistillationLoss, LossContext, check_choice, check_temperature
from kdsuite.losses.baselines import check_nonnegative, refuse_causal_lm
from kdsuite.losses.teacher_reads import TeacherReads, not_cacheable
from kdsuite.mapping import LayerPairs

STAGES = ("intermediate", "prediction", "both")


def masked_scores(query: torch.Tensor, key: torch.Tensor, num_heads: int, mask: torch.Tensor) -> torch.Tensor:
    """`Q_i K_i^T / sqrt(d_k)` per head, padding keys' scores set to 0: (B, L, d) x2 -> (B, h, L, L)."""
    scores = scaled_dot_products(query, key, num_heads)  # (B, h, L, L)
    return scores.masked_fill(~mask.bool()[:, None, None, :], 0.0)


def attention_term(student_scores: list[torch.Tensor], teacher_scores: list[torch.Tensor]) -> torch.Tensor:
    """`sum_pairs mean(A^S - A^T)^2` over (B, h, L, L) score maps, one per pair."""
    return sum(F.mse_loss(s, t) for s, t in zip(student_scores, teacher_scores))


def hidden_term(student_hidden: list[torch.Tensor], teacher_hidden: list[torch.Tensor],
                projection: nn.Module) -> torch.Tensor:
    """`sum_pairs mean(H^S W - H^T)^2` over (B, L, d) states, all positions (official)."""
    return sum(F.mse_loss(projection(s.float()), t.float()) for s, t in zip(student_hidden, teacher_hidden))


def prediction_term(student_logits, teacher_logits, labels, temperature: float, is_regression: bool) -> torch.Tensor:
    """`-sum_c softmax(z^T/t)_c log softmax(z^S/t)_c`, mean over examples; regression: MSE to labels."""
    if is_regression:
        return F.mse_loss(student_logits.squeeze(-1).float(), labels.float())
    teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=-1)  # (B, C)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, C)
    return -(teacher_probs * student_log_probs).sum(dim=-1).mean()


def learned_projection(d_student: int, d_teacher: int) -> nn.Linear:
    """`Linear(d_S, d_T)`: the identity (zero bias) when the widths are equal."""
    projection = nn.Linear(d_student, d_teacher)
    if d_student == d_teacher:
        with torch.no_grad():
            projection.weight.copy_(torch.eye(d_student))
            projection.bias.zero_()
    return projection


INTERMEDIATE_SHARE = 10 / 13  # official README: task_distill.py 10 epochs, then --pred_distill 3 epochs


def default_split(training_batches: int) -> int:
    """INTERMEDIATE_SHARE of a run's training batches, rounded, leaving the prediction stage at least one."""
    return min(round(INTERMEDIATE_SHARE * training_batches), training_batches - 1)


def intermediate_length(intermediate_batches: int | None, training_batches: int | None) -> int | None:
    """The intermediate stage's training batches under `stage=both`: the given count, checked against
    the run's length, or INTERMEDIATE_SHARE of the run (None while the run's length is unknown)."""
    if training_batches is not None and training_batches < 2:
        raise ValueError(f"loss.stage=both runs two stages one after the other, but this run makes only "
                         f"{training_batches} training batch per process; give it more steps, or one stage "
                         f"(loss.stage=intermediate or loss.stage=prediction)")
    if intermediate_batches is None:
        if training_batches is None:
            return None
        return default_split(training_batches)
    if training_batches is not None and intermediate_batches >= training_batches:
        raise ValueError(
            f"loss.intermediate_batches={intermediate_batches} with loss.stage=both, but this run makes only "
            f"{training_batches} training batches per process: it would never reach the prediction stage, and its "
            f"classifier would never train on the task. Give fewer than {training_batches} (null: the official "
            f"10/13 of the run, {default_split(training_batches)}), or loss.stage=intermediate"
        )
    return intermediate_batches


def check_equal_heads(student_heads: int, teacher_heads: int) -> None:
    if student_heads != teacher_heads:
        raise ValueError(
            f"loss=tinybert compares attention scores head by head: the student has {student_heads} heads, "
            f"the teacher {teacher_heads}; give the student the teacher's head count "
            f"(student.config_overrides.num_attention_heads={teacher_heads})"
        )


class TinyBERTLoss(DistillationLoss):
    """TinyBERT task distillation; see the module docstring for the terms, stages and choices."""

    name = "tinybert"
    needs_hidden_states = True

    def __init__(
        self,
        context: LossContext,
        stage: str = "both",
        intermediate_batches: int | None = None,
        temperature: float = 1.0,
        attn_weight: float = 1.0,
        hidn_weight: float = 1.0,
        embd_weight: float = 1.0,
    ):
        refuse_causal_lm(self.name, context)
        super().__init__(context)
        check_choice("stage", stage, STAGES)
        check_temperature(temperature)
        check_nonnegative(attn_weight=attn_weight, hidn_weight=hidn_weight, embd_weight=embd_weight)
        if intermediate_batches is not None and intermediate_batches < 0:
            raise ValueError(f"loss.intermediate_batches={intermediate_batches} must be >= 0, or null")
        if stage == "both":
            intermediate_batches = intermediate_length(intermediate_batches, context.training_batches)
        student_arch, teacher_arch = context.student_architecture, context.teacher_architecture
        if student_arch is not None and teacher_arch is not None:
            check_equal_heads(student_arch.num_attention_heads, teacher_arch.num_attention_heads)
        self.stage, self.intermediate_batches, self.temperature = stage, intermediate_batches, temperature
        self.weights = {"attn": attn_weight, "hidn": hidn_weight, "embd": embd_weight}
        self.layer_pairs: LayerPairs = list(context.layer_pairs)
        self.pairs_used: LayerPairs = [(0, 0), *self.layer_pairs]
        self.hidden_projection = learned_projection(context.student_hidden_size, context.teacher_hidden_size)  # W_h
        self.embedding_projection = learned_projection(context.student_hidden_size, context.teacher_hidden_size)  # W_e
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # training calls so far
        self._captures: tuple[ProjectionCapture, ProjectionCapture] | None = None

    def cached_teacher_reads(self, top_k: int | None = None) -> TeacherReads:
        raise not_cacheable(self.name, "follows the official code over padding positions too (the scores of padding "
                                       "queries and the hidden states of padding tokens enter its MSEs), and those "
                                       "depend on how far each batch is padded, which the store, holding each "
                                       "example's real tokens, cannot reproduce")

    def bind_models(self, student, teacher) -> None:
        """Hook the query/key projections of the mapped blocks of both models."""
        check_equal_heads(student.config.num_attention_heads, teacher.config.num_attention_heads)
        if self._captures is not None:
            for capture in self._captures:
                capture.remove()
        self._captures = (
            ProjectionCapture(student, [s for s, _ in self.layer_pairs], ("query", "key")),
            ProjectionCapture(teacher, [t for _, t in self.layer_pairs], ("query", "key")),
        )

    def current_stage(self) -> str:
        if self.stage != "both":
            return self.stage
        if self.intermediate_batches is None:
            raise RuntimeError("loss=tinybert with stage=both and intermediate_batches=null needs the run's length "
                               "(LossContext.training_batches) to place the switch; give loss.intermediate_batches")
        return "intermediate" if int(self.calls) < self.intermediate_batches else "prediction"

    def intermediate_terms(self, student_out, teacher_out, mask) -> dict[str, torch.Tensor]:
        student_capture, teacher_capture = self._captures
        heads = student_capture.num_heads
        student_scores = [masked_scores(student_capture.get(s, "query"), student_capture.get(s, "key"), heads, mask)
                          for s, _ in self.layer_pairs]  # K x (B, h, L, L)
        teacher_scores = [masked_scores(teacher_capture.get(t, "query"), teacher_capture.get(t, "key"), heads, mask)
                          for _, t in self.layer_pairs]  # K x (B, h, L, L)
        student_hidden = [student_out.hidden_states[s] for s, _ in self.layer_pairs]  # K x (B, L, d_S)
        teacher_hidden = [teacher_out.hidden_states[t] for _, t in self.layer_pairs]  # K x (B, L, d_T)
        return {
            "attn": attention_term(student_scores, teacher_scores),
            "hidn": hidden_term(student_hidden, teacher_hidden, self.hidden_projection),
            "embd": hidden_term([student_out.hidden_states[0]], [teacher_out.hidden_states[0]],
                                self.embedding_projection),
        }

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        if self._captures is None:
            raise RuntimeError("loss=tinybert reads attention through hooks: call bind_models(student, teacher) first")
        stage = self.current_stage()
        try:
            with torch.set_grad_enabled(torch.is_grad_enabled() and stage == "intermediate"):
                terms = self.intermediate_terms(student_out, teacher_out, batch["attention_mask"])
            with torch.set_grad_enabled(torch.is_grad_enabled() and stage == "prediction"):
                terms["pred"] = prediction_term(student_out.logits, teacher_out.logits, batch["labels"],
                                                self.temperature, self.is_regression)
        finally:
            for capture in self._captures:
                capture.clear()
        if stage == "intermediate":
            total = sum(self.weights[name] * terms[name] for name in self.weights)
        else:
            total = terms["pred"]
        if self.training:
            self.calls += 1
        stage_value = torch.tensor(float(stage == "prediction"), device=total.device)
        return {**terms, "stage": stage_value, "loss": total + gradient_anchor(student_out, self)}
