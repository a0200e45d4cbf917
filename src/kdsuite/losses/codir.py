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
- Heads and banks are initialised from the run's seed, so every process of a run (and a rerun)
  starts from the same ones.

On several processes (DDP), the loss behaves as on one process over the global batch:
- negatives are drawn for the global batch (every rank's example indices, gathered in rank order)
  by a CPU generator seeded by (seed, number of training draws so far), and each rank keeps its
  own rows, so a 2-rank run and a 1-rank run over the same global batches draw the same ones;
- the banks are updated from the embeddings and indices of the global batch, so every rank holds
  the same banks after every step; an example present twice in one update (the padding of a
  short last batch) counts once, its first occurrence;
- crd_nce's normalisers come from the global first batch;
- the loss's buffers are excluded from DDP's buffer broadcast (`bind_models`): banks that drift
  apart would otherwise be hidden by rank 0's copy at every forward, and broadcasting banks of
  one slot per training example at every step would be a waste.
"""

from __future__ import annotations

import hashlib
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from kdsuite.distributed import all_gather_rows, all_reduce_sum
from kdsuite.losses.base import LossContext, check_choice, require_track
from kdsuite.losses.kd import KDLoss
from kdsuite.losses.pooling import POOLINGS, pool
from kdsuite.losses.teacher_reads import TeacherReads
from kdsuite.private_api import ddp_ignore

NEGATIVES = ("label_aware", "random")
OBJECTIVES = ("infonce", "crd_nce")

log = logging.getLogger(__name__)


def bank_init_range(dim: int) -> float:
    """s = 1 / sqrt(dim / 3): uniform [-s, s] slots have the variance of unit vectors' entries."""
    return 1.0 / math.sqrt(dim / 3.0)


def init_memory_bank(size: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    bound = bank_init_range(dim)
    return torch.rand(size, dim, generator=generator) * (2 * bound) - bound


def first_occurrences(indices: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value of `indices` (B,), in value order."""
    unique, inverse = torch.unique(indices, return_inverse=True)
    positions = torch.arange(len(indices), device=indices.device)
    first = torch.full_like(unique, len(indices))
    return first.scatter_reduce(0, inverse, positions, reduce="amin")


@torch.no_grad()
def update_memory_bank(bank: torch.Tensor, indices: torch.Tensor, embeddings: torch.Tensor,
                       momentum: float = 0.5) -> None:
    """M[i] = normalize(momentum * M[i] + (1 - momentum) * z_i), in place.

    An index present more than once is updated once, from its first occurrence, so the result
    does not depend on the order in which a device writes duplicates.
    """
    if len(indices.unique()) < len(indices):
        keep = first_occurrences(indices)
        indices, embeddings = indices[keep], embeddings[keep]
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

    def forward(self, example_index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) example indices -> (B, K) negative indices.

        The random numbers come from `generator` (a CPU one; None: the global CPU generator) and
        are drawn on the CPU whatever the device, so a draw is the same on CPU and GPU.
        """
        shape = (example_index.shape[0], self.num_negatives)
        device = example_index.device
        if self.label_aware:
            class_row = torch.searchsorted(self.classes, self.labels[example_index])  # (B,)
            sizes = self.pool_sizes[class_row].unsqueeze(1)  # (B, 1)
            uniform = torch.rand(shape, generator=generator).to(device)  # (B, K)
            offsets = (uniform * sizes).long().clamp(max=sizes - 1)
            return self.pools[class_row.unsqueeze(1), offsets]
        drawn = torch.randint(0, self.num_examples - 1, shape, generator=generator).to(device)  # (B, K)
        return drawn + (drawn >= example_index.unsqueeze(1)).long()  # skip the anchor itself


def check_negatives(sampler: NegativeSampler) -> None:
    """Warn, naming the key, when an anchor draws more negatives than its pool holds: the sampler
    draws with replacement, so it does not fail, but the K "negatives" are then the same few
    examples repeated (seen: num_negatives=100000 over 64 examples, accepted silently). The pool is
    the other examples, or with `negatives=label_aware` the examples of the other labels; the
    smallest one is reported. A warning, not an error: the smoke preset and small subsets draw
    CoDIR's default 100 negatives from fewer examples on purpose, and the paper's contrast still
    holds with repeats; only its number of distinct negatives is smaller."""
    if sampler.label_aware:
        available = int(sampler.pool_sizes.min())
        pool = "examples of another label (negatives=label_aware), in the smallest class's pool"
    else:
        available = sampler.num_examples - 1
        pool = "other training examples"
    if sampler.num_negatives > available:
        log.warning(
            "loss.num_negatives=%d, but the training set has only %d %s: each anchor's negatives repeat "
            "(draws with replacement); choose loss.num_negatives <= %d for distinct ones",
            sampler.num_negatives, available, pool, available,
        )


def draw_seed(seed: int, draw: int) -> int:
    """The generator seed of training draw number `draw` of a run seeded `seed` (63 bits)."""
    digest = hashlib.sha256(f"codir-negatives/{seed}/{draw}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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
        require_track(context, "classification",
                      "codir contrasts per-example representations of labelled examples; task "
                      "{task!r} trains causal LMs: use loss=ce, kd or fdd there")
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
        self.seed = context.seed
        pairs = len(self.layer_pairs)
        num_examples = len(context.train_labels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            self.student_head = nn.Linear(pairs * context.student_hidden_size, embed_dim)
            self.teacher_head = nn.Linear(pairs * context.teacher_hidden_size, embed_dim)
            self.register_buffer("student_bank", init_memory_bank(num_examples, embed_dim))
            self.register_buffer("teacher_bank", init_memory_bank(num_examples, embed_dim))
        self.sampler = NegativeSampler(context.train_labels, num_negatives, negatives, self.is_regression)
        if not context.labels_are_placeholders:
            check_negatives(self.sampler)
        self.register_buffer("nce_norms", torch.zeros(2))  # Z_S, Z_T of crd_nce; 0 = not yet fixed
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))  # training draws so far

    def cached_teacher_reads(self, top_k: int | None = None) -> TeacherReads:
        """Each mapped teacher layer pooled per example, and the logits of L_KD."""
        return TeacherReads(hidden_layers=self.teacher_layers(), pooling=self.pooling)

    def bind_models(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Keep the loss's buffers (banks, draw count, sampler tables) out of DDP's broadcast:
        every rank keeps them equal by itself (see the module docstring)."""
        own = {id(buffer) for buffer in self.buffers()}
        ddp_ignore(student, [name for name, buffer in student.named_buffers() if id(buffer) in own])

    def draw_negatives(self, global_index: torch.Tensor) -> torch.Tensor:
        """(B_global,) indices of the global batch -> (B_global, K) negatives, from the generator
        of this training draw."""
        generator = torch.Generator().manual_seed(draw_seed(self.seed, int(self.draws)))
        return self.sampler(global_index, generator)

    def embed(self, out, layers: list[int], head: nn.Linear, mask: torch.Tensor) -> torch.Tensor:
        pooled = [pool(out.hidden_states[layer].float(), mask, self.pooling) for layer in layers]  # K x (B, d)
        return F.normalize(head(torch.cat(pooled, dim=-1)).float(), dim=-1)  # (B, 128)

    def contrastive(self, z_student, z_teacher, index, negatives) -> torch.Tensor:
        """The contrastive term of anchors (B, 128) with slots `index` (B,) and `negatives` (B, K)."""
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
            sums = torch.stack([raw_student.sum(), raw_teacher.sum(), raw_student.new_tensor(raw_student.numel())])
            sums = all_reduce_sum(sums.detach())  # the means of the global first batch
            self.nce_norms.copy_(sums[:2] / sums[2] * num_data)
        num_data = len(self.student_bank)
        return nce_loss(raw_student / self.nce_norms[0], num_data) + nce_loss(raw_teacher / self.nce_norms[1], num_data)

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        logit_terms = super().forward(student_out, teacher_out, batch)
        mask = batch["attention_mask"]
        z_student = self.embed(student_out, [s for s, _ in self.layer_pairs], self.student_head, mask)
        z_teacher = self.embed(teacher_out, [t for _, t in self.layer_pairs], self.teacher_head, mask)
        index = batch["example_index"]  # (B,)
        global_index, offset = all_gather_rows(index)  # (B_global,), where this rank's rows start
        negatives = self.draw_negatives(global_index)[offset: offset + len(index)]  # (B, K)
        crd = self.contrastive(z_student, z_teacher, index, negatives)
        if self.training:
            update_memory_bank(self.student_bank, global_index, all_gather_rows(z_student)[0], self.momentum)
            update_memory_bank(self.teacher_bank, global_index, all_gather_rows(z_teacher)[0], self.momentum)
            self.draws += 1
        return {**logit_terms, "crd": crd, "loss": logit_terms["loss"] + self.lambda_crd * crd}
