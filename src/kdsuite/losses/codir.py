"""`codir`: contrastive distillation on intermediate representations (Sun et al., EMNLP 2020).

    L = (1 - alpha) * CE + alpha * T^2 * KL(p_T || p_S) + lambda_crd * L_crd

The first two terms are `kd`'s loss (`CoDIRLoss` extends `KDLoss`); the paper calls their mixing
weight beta, here it is `alpha` as in `kd` and `fdd`, so one key means one thing in every family.

Representations: for each mapped pair, the layer's hidden states pooled per example (`mean` over
non-padding tokens, the paper's; or `cls`, the released code's), concatenated over pairs, mapped
to 128 dimensions by a linear head per model and L2-normalised: z_S = g_S(f_S), z_T = g_T(f_T).
Both heads train with the student.

Memory banks: one 128-d slot per training example (addressed by the batch's `example_index`)
for each model, initialised uniformly in [-s, s] with s = 1/sqrt(128/3), and updated after each
training step by M[i] = normalize(0.5 * M[i] + 0.5 * z_i).

Negatives: K per example, drawn with replacement from the training examples with a different
label (`label_aware`) or from all other examples (`random`; regression tasks always use it).

Objectives:
- `infonce` (the paper's description): logits z_S . [z_T(x), M_T[neg_1..K]] / tau, cross-entropy
  against index 0; `symmetric` averages with the teacher-anchored direction against M_S.
- `crd_nce` (the released code): CRD's noise-contrastive estimator with memory slots as
  positives, P(data | v) = h / (h + K/N) with h = exp(v . m / tau) / Z, Z fixed at the first
  batch as N * mean(exp(v . m / tau)); both directions are summed, as in CRD.

Choices made where the paper is silent:
- Every term is a per-example mean: the released code's extra division of the CRD term by the
  batch size is not reproduced, so lambda_crd keeps its meaning across batch sizes.
- Default lambda_crd = 0.1: an InfoNCE term starts near log(K + 1) ~ 4.6, about 7x CE at the
  start, so 0.1 keeps it from dominating; it is the weight a sweep tunes.
- Banks and negatives are updated/drawn only in training steps; a batch's own slots are never
  its negatives under `label_aware` (different label) and excluded under `random`.
- Banks, heads and pools are saved with the student (they are submodules/buffers of the loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdsuite.losses.base import LossContext, check_choice
from kdsuite.losses.kd import KDLoss

POOLINGS = ("mean", "cls")
NEGATIVES = ("label_aware", "random")
OBJECTIVES = ("infonce", "crd_nce")


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, L, d) -> (B, d): padding-masked mean over tokens, or the first token."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def bank_init_range(dim: int) -> float:
    """s = 1 / sqrt(dim / 3): uniform [-s, s] slots have the variance of unit vectors' entries."""
    return 1.0 / math.sqrt(dim / 3.0)


def init_memory_bank(size: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    bound = bank_init_range(dim)
    return torch.rand(size, dim, generator=generator) * (2 * bound) - bound


@torch.no_grad()
def update_memory_bank(bank: torch.Tensor, indices: torch.Tensor, embeddings: torch.Tensor, momentum: float = 0.5) -> None:
    """M[i] = normalize(momentum * M[i] + (1 - momentum) * z_i), in place."""
    mixed = momentum * bank[indices] + (1.0 - momentum) * embeddings.detach().to(bank.dtype)
    bank[indices] = F.normalize(mixed, dim=-1)


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, tau: float) -> torch.Tensor:
    """Cross-entropy of `anchor . [positive, negatives] / tau` against index 0, mean over examples.

    anchor, positive (B, D); negatives (B, K, D); all L2-normalised.
    """
    positive_logit = (anchor * positive).sum(dim=-1, keepdim=True)  # (B, 1)
    negative_logits = torch.einsum("bd,bkd->bk", anchor, negatives)  # (B, K)
    logits = torch.cat([positive_logit, negative_logits], dim=1) / tau  # (B, 1 + K)
    target = torch.zeros(anchor.shape[0], dtype=torch.long, device=anchor.device)
    return F.cross_entropy(logits, target)


def nce_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """CRD's NCE criterion on normalised scores h (B, 1 + K), positive first, noise P_n = 1/N.

    -[log h_0 / (h_0 + K P_n) + sum_k log K P_n / (h_k + K P_n)], mean over examples.
    """
    eps = 1e-7
    noise = (scores.shape[1] - 1) / num_data  # K * P_n
    log_positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    log_negative = torch.log(noise / (scores[:, 1:] + noise + eps)).sum(dim=1)
    return -(log_positive + log_negative).mean()


class NegativeSampler(nn.Module):
    """Draws K negative example indices per anchor: different label, or any other example."""

    def __init__(self, train_labels: torch.Tensor, num_negatives: int, strategy: str, is_regression: bool):
        super().__init__()
        self.num_negatives = num_negatives
        self.label_aware = strategy == "label_aware" and not is_regression
        self.num_examples = len(train_labels)
        if self.num_examples < 2:
            raise ValueError("codir needs at least 2 training examples to draw negatives")
        self.register_buffer("labels", train_labels.clone(), persistent=False)
        if self.label_aware:
            classes = train_labels.unique()
            if len(classes) < 2:
                raise ValueError(
                    "codir negatives=label_aware needs examples of at least two labels in the "
                    "training set; use loss.negatives=random"
                )
            # row c lists the indices whose label differs from classes[c], padded to one width
            # (padding sits past pool_sizes[c] and is never drawn)
            pools = [torch.nonzero(train_labels != c).squeeze(1) for c in classes]
            width = max(len(p) for p in pools)
            padded = torch.stack([torch.cat([p, p.new_full((width - len(p),), p[0])]) for p in pools])
            self.register_buffer("classes", classes, persistent=False)
            self.register_buffer("pools", padded, persistent=False)
            self.register_buffer("pool_sizes", torch.tensor([len(p) for p in pools]), persistent=False)

    def forward(self, example_index: torch.Tensor) -> torch.Tensor:
        """(B,) example indices -> (B, K) negative indices."""
        shape = (example_index.shape[0], self.num_negatives)
        device = example_index.device
        if self.label_aware:
            class_row = torch.searchsorted(self.classes, self.labels[example_index])  # (B,)
            sizes = self.pool_sizes[class_row].unsqueeze(1)  # (B, 1)
            offsets = (torch.rand(shape, device=device) * sizes).long().clamp(max=sizes - 1)
            return self.pools[class_row.unsqueeze(1), offsets]
        drawn = torch.randint(0, self.num_examples - 1, shape, device=device)
        return drawn + (drawn >= example_index.unsqueeze(1)).long()  # skip the anchor itself


class CoDIRLoss(KDLoss):
    """Contrastive distillation on intermediate representations; see the module docstring.

    `alpha` and `temperature` are L_KD's, held and checked by `KDLoss`.
    """

    name = "codir"
    needs_hidden_states = True

    def __init__(
        self,
        context: LossContext,
        alpha: float = 0.5,
        temperature: float = 2.0,
        lambda_crd: float = 0.1,
        pooling: str = "mean",
        embed_dim: int = 128,
        num_negatives: int = 100,
        negatives: str = "label_aware",
        objective: str = "infonce",
        tau: float = 0.07,
        symmetric: bool = False,
        momentum: float = 0.5,
    ):
        if context.task.is_causal_lm:
            raise ValueError(
                f"codir contrasts per-example representations of labelled examples; task "
                f"{context.task.name!r} trains causal LMs: use loss=ce, kd or fdd there"
            )
        super().__init__(context, alpha, temperature)
        check_choice("pooling", pooling, POOLINGS)
        check_choice("negatives", negatives, NEGATIVES)
        check_choice("objective", objective, OBJECTIVES)
        if lambda_crd < 0 or tau <= 0 or num_negatives < 1 or not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"codir needs lambda_crd >= 0, tau > 0, num_negatives >= 1 and momentum in [0, 1): "
                f"got {lambda_crd}, {tau}, {num_negatives}, {momentum}"
            )
        self.lambda_crd, self.pooling, self.objective, self.tau = lambda_crd, pooling, objective, tau
        self.symmetric, self.momentum = symmetric, momentum
        self.layer_pairs = list(context.layer_pairs)
        pairs = len(self.layer_pairs)
        self.student_head = nn.Linear(pairs * context.student_hidden_size, embed_dim)
        self.teacher_head = nn.Linear(pairs * context.teacher_hidden_size, embed_dim)
        num_examples = len(context.train_labels)
        self.sampler = NegativeSampler(context.train_labels, num_negatives, negatives, self.is_regression)
        self.register_buffer("student_bank", init_memory_bank(num_examples, embed_dim))
        self.register_buffer("teacher_bank", init_memory_bank(num_examples, embed_dim))
        self.register_buffer("nce_norms", torch.zeros(2))  # Z_S, Z_T of crd_nce; 0 = not yet fixed

    def embed(self, out, layers: list[int], head: nn.Linear, mask: torch.Tensor) -> torch.Tensor:
        pooled = [pool(out.hidden_states[layer].float(), mask, self.pooling) for layer in layers]  # K x (B, d)
        return F.normalize(head(torch.cat(pooled, dim=-1)).float(), dim=-1)  # (B, 128)

    def contrastive(self, z_student, z_teacher, index) -> torch.Tensor:
        negatives = self.sampler(index)  # (B, K)
        if self.objective == "infonce":
            loss = info_nce(z_student, z_teacher, self.teacher_bank[negatives], self.tau)
            if self.symmetric:
                loss = 0.5 * (loss + info_nce(z_teacher, z_student, self.student_bank[negatives], self.tau))
            return loss
        slots = torch.cat([index.unsqueeze(1), negatives], dim=1)  # (B, 1 + K), positive slot first
        raw_student = torch.exp(torch.einsum("bd,bkd->bk", z_student, self.teacher_bank[slots]) / self.tau)
        raw_teacher = torch.exp(torch.einsum("bd,bkd->bk", z_teacher, self.student_bank[slots]) / self.tau)
        if not self.nce_norms.all():
            num_data = len(self.student_bank)
            self.nce_norms.copy_(torch.stack([raw_student.mean(), raw_teacher.mean()]).detach() * num_data)
        num_data = len(self.student_bank)
        return nce_loss(raw_student / self.nce_norms[0], num_data) + nce_loss(raw_teacher / self.nce_norms[1], num_data)

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        logit_terms = super().forward(student_out, teacher_out, batch)
        mask = batch["attention_mask"]
        z_student = self.embed(student_out, [s for s, _ in self.layer_pairs], self.student_head, mask)
        z_teacher = self.embed(teacher_out, [t for _, t in self.layer_pairs], self.teacher_head, mask)
        index = batch["example_index"]
        crd = self.contrastive(z_student, z_teacher, index)
        if self.training:
            update_memory_bank(self.student_bank, index, z_student, self.momentum)
            update_memory_bank(self.teacher_bank, index, z_teacher, self.momentum)
        return {**logit_terms, "crd": crd, "loss": logit_terms["loss"] + self.lambda_crd * crd}
