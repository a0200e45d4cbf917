"""`minilm`: self-attention distillation of the last layer, MiniLM v1 (Wang et al., NeurIPS 2020)
and v2 (Wang et al., Findings of ACL 2021), as a task loss beside the student's CE.

v1 (`version=v1`): attention distributions and value relation of the student's last block M and
teacher block L, per attention head a (A_h heads, equal in both models), averaged over the |x|
tokens of each example:

    L_AT = 1/(A_h |x|) sum_a sum_t KL(A^T_{L,a,t} || A^S_{M,a,t})     A_a = softmax(Q_a K_a^T / sqrt(d_k))
    L_VR = 1/(A_h |x|) sum_a sum_t KL(VR^T_{L,a,t} || VR^S_{M,a,t})   VR_a = softmax(V_a V_a^T / sqrt(d_k))

v2 (`version=v2`): query-query, key-key and value-value relations. Each model's Q, K and V (all
heads concatenated, (B, |x|, d)) are split into A_r `relation_heads` of d / A_r each, whatever its
attention heads, so head counts and widths may differ between the models:

    R^X_a = softmax(X_a X_a^T / sqrt(d_r))      X in {Q, K, V}, d_r = d / A_r (each model its own)
    L_XX  = 1/(A_r |x|) sum_a sum_t KL(R^{X,T}_{a,t} || R^{X,S}_{a,t})
    L_v2  = L_QQ + L_KK + L_VV

The total is `distill_weight * (L_AT + L_VR)` (v1) or `distill_weight * L_v2` (v2), plus
`ce_weight * CE` (MSE for regression).

Paper settings and where they come from:
- the student's block is its last (both papers); the teacher's is `teacher_layer`, default
  (null) the papers' choice for the teacher's size: its last block, except for 24-layer
  (large-size) teachers under v2, where MiniLMv2 reports that an upper-middle layer works better
  and uses the 21st (BERT_large); an explicit `teacher_layer` applies to both versions.
  Unverified for other large teachers: MiniLMv2 is said to use layer 19 of RoBERTa_large and
  XLM-R_large, and third-party reproductions' RoBERTa-large configs do distil layer 19, but the
  official microsoft/unilm minilm README (and the rest of that repository) gives no teacher
  layers, and the paper's text could not be read here. So the default stays 21 for every
  24-layer teacher, whatever its model_type; for RoBERTa-large or XLM-R-large teachers set
  `loss.teacher_layer=19` to follow those reproductions;
- `relation_heads` (v2), default (null) the paper's 48 for base-size (d = 768) and 64 for
  large-size (d = 1024) teachers, i.e. one relation head per 16 dimensions of the teacher:
  max(1, d_T // 16). It must divide both widths.

Choices where the papers are silent (MiniLM distils task-agnostically, before fine-tuning):
- In this suite's single task run the student's CE is added (`ce_weight`, default 1) so that its
  classifier learns; `ce_weight=0` leaves the papers' objective alone (the classifier then gets a
  zero gradient only).
- Padding: keys are excluded from every softmax (probability 0), |x| counts the non-padding
  tokens of each example, the per-example means are averaged over the batch; no official MiniLM
  code is released to compare with.
- The attention is recomputed from the query/key/value projections captured by hooks
  (`attention.py`), in fp32; both models keep SDPA. On a CPU the KLs are computed per example on
  its real tokens, with the student's gradient written out (`relation_kl.py`): the same numbers as
  the composed form over padded (B, H, L, L) tensors, which a GPU keeps, at a fraction of its
  memory traffic.
- `teacher.outputs=cached`: the store holds the teacher block's q/k/v at every real token, at the
  pass's precision (lossless), and no logits; padding is left out of everything the loss reads, so
  the cached terms equal the live ones however a batch is padded.
"""

from __future__ import annotations

import torch

from kdsuite.losses.attention import PROJECTIONS, ProjectionCapture, gradient_anchor, teacher_projection
from kdsuite.losses.base import DistillationLoss, LossContext, check_choice
from kdsuite.losses.baselines import check_nonnegative, refuse_causal_lm
from kdsuite.losses.relation_kl import relation_kl
from kdsuite.losses.teacher_reads import TeacherReads, not_cacheable

VERSIONS = ("v1", "v2")
LARGE_TEACHER_LAYERS = 24  # MiniLMv2's large-size teachers (BERT_large, RoBERTa_large)
LARGE_TEACHER_LAYER = 21  # the upper-middle layer MiniLMv2 distils from BERT_large (RoBERTa/XLM-R large: 19?)
DIMS_PER_RELATION_HEAD = 16  # 768 / 48 (base) = 1024 / 64 (large)


def default_teacher_layer(version: str, teacher_layers: int) -> int:
    """The papers' teacher block: the last, or the 21st of a 24-layer teacher under v2."""
    if version == "v2" and teacher_layers == LARGE_TEACHER_LAYERS:
        return LARGE_TEACHER_LAYER
    return teacher_layers


def attention_transfer_terms(student_qkv, teacher_qkv, student_heads: int, teacher_heads: int,
                             mask) -> dict[str, torch.Tensor]:
    """MiniLM v1's `attn_kl` (L_AT) and `vr_kl` (L_VR) from (query, key, value) triples, each (B, L, d)."""
    if student_heads != teacher_heads:
        raise ValueError(f"minilm v1 needs equal head counts, got student {student_heads} and teacher {teacher_heads}")
    (sq, sk, sv), (tq, tk, tv) = student_qkv, teacher_qkv
    return {"attn_kl": relation_kl((tq, tk), (sq, sk), teacher_heads, mask),
            "vr_kl": relation_kl((tv, tv), (sv, sv), teacher_heads, mask)}


def relation_terms(student_qkv, teacher_qkv, relation_heads: int, mask) -> dict[str, torch.Tensor]:
    """MiniLM v2's `qq_kl`, `kk_kl`, `vv_kl` from (query, key, value) triples, each (B, L, d) of its model's width."""
    return {f"{name}_kl": relation_kl((teacher, teacher), (student, student), relation_heads, mask)
            for name, student, teacher in zip(("qq", "kk", "vv"), student_qkv, teacher_qkv)}


class MiniLMLoss(DistillationLoss):
    """MiniLM v1/v2 self-attention distillation plus the task CE; see the module docstring."""

    name = "minilm"

    def __init__(
        self,
        context: LossContext,
        version: str = "v2",
        teacher_layer: int | None = None,
        relation_heads: int | None = None,
        distill_weight: float = 1.0,
        ce_weight: float = 1.0,
    ):
        refuse_causal_lm(self.name, context)
        super().__init__(context)
        check_choice("version", version, VERSIONS)
        check_nonnegative(distill_weight=distill_weight, ce_weight=ce_weight)
        self.version, self.distill_weight, self.ce_weight = version, distill_weight, ce_weight
        self.requested_teacher_layer = teacher_layer
        d_student, d_teacher = context.student_hidden_size, context.teacher_hidden_size
        if relation_heads is None and version == "v2":
            relation_heads = max(1, d_teacher // DIMS_PER_RELATION_HEAD)
        if version == "v2":
            for role, width in (("student", d_student), ("teacher", d_teacher)):
                if relation_heads < 1 or width % relation_heads:
                    raise ValueError(
                        f"loss.relation_heads={relation_heads} must be >= 1 and divide the {role}'s width {width} "
                        f"(the default, null, is max(1, teacher width // {DIMS_PER_RELATION_HEAD})); "
                        f"the widths are {d_student} (student) and {d_teacher} (teacher)"
                    )
        self.relation_heads = relation_heads
        self.teacher_layer: int | None = None
        self.student_layer: int | None = None
        self.pairs_used = None
        student_arch, teacher_arch = context.student_architecture, context.teacher_architecture
        if student_arch is not None and teacher_arch is not None:
            self._choose_layers(student_arch, teacher_arch)
        self._captures: tuple[ProjectionCapture, ProjectionCapture] | None = None

    def _choose_layers(self, student_arch, teacher_arch) -> None:
        """The blocks both models are read at, checked against their depths and (v1) heads."""
        teacher_layers = int(teacher_arch.num_hidden_layers)
        layer = self.requested_teacher_layer
        if layer is None:
            layer = default_teacher_layer(self.version, teacher_layers)
        elif not 1 <= layer <= teacher_layers:
            raise ValueError(
                f"loss.teacher_layer={layer} is out of range: the teacher has blocks 1..{teacher_layers} "
                f"(null: the paper's choice, block {default_teacher_layer(self.version, teacher_layers)})"
            )
        if self.version == "v1" and student_arch.num_attention_heads != teacher_arch.num_attention_heads:
            raise ValueError(
                f"loss.version=v1 compares attention distributions head by head: the student has "
                f"{student_arch.num_attention_heads} heads, the teacher {teacher_arch.num_attention_heads}; "
                f"use loss.version=v2 (relation heads) or a student with the teacher's head count"
            )
        self.teacher_layer, self.student_layer = layer, int(student_arch.num_hidden_layers)
        self.pairs_used = [(self.student_layer, self.teacher_layer)]

    def cached_teacher_reads(self, top_k: int | None = None) -> TeacherReads:
        """The query, key and value projections of the teacher's block, at every real token; no logits
        (the loss adds the task CE on the labels). The block depends on the teacher's depth, which
        the run gives the loss before the teacher is loaded (LossContext.teacher_architecture)."""
        if self.teacher_layer is None:
            raise not_cacheable(self.name, "reads the query/key/value projections of a teacher block chosen by the "
                                           "teacher's depth, which this run does not give the loss before the teacher "
                                           "is loaded (LossContext.teacher_architecture)")
        return TeacherReads(logits=False, projections=tuple((self.teacher_layer, p) for p in PROJECTIONS))

    def bind_models(self, student, teacher) -> None:
        """Check the layers against the models and hook the q/k/v projections of the two blocks."""
        self._choose_layers(student.config, teacher.config)
        if self._captures is not None:
            for capture in self._captures:
                capture.remove()
        self._captures = (ProjectionCapture(student, [self.student_layer]),
                          ProjectionCapture(teacher, [self.teacher_layer]))

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        if self._captures is None:
            raise RuntimeError("loss=minilm reads attention through hooks: call bind_models(student, teacher) first")
        student_capture, teacher_capture = self._captures
        mask = batch["attention_mask"]
        try:
            student_qkv = [student_capture.get(self.student_layer, p)
                           for p in ("query", "key", "value")]  # 3 x (B, L, d_S)
            teacher_qkv = [teacher_projection(teacher_out, teacher_capture, self.teacher_layer, p)
                           for p in PROJECTIONS]  # 3 x (B, L, d_T)
            if self.version == "v1":
                terms = attention_transfer_terms(student_qkv, teacher_qkv, student_capture.num_heads,
                                                 teacher_capture.num_heads, mask)
            else:
                terms = relation_terms(student_qkv, teacher_qkv, self.relation_heads, mask)
        finally:
            student_capture.clear()
            teacher_capture.clear()
        ce = self.task_loss(student_out.logits, batch["labels"])
        total = self.distill_weight * sum(terms.values()) + self.ce_weight * ce
        return {**terms, "ce": ce, "loss": total + gradient_anchor(student_out, self)}
