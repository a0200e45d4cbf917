"""`fdd`: feature dynamics distillation (Gong et al., ACL 2025).

A residual network is an Euler discretisation of an ODE over depth: the teacher a fine one, the
student a coarse one. FDD matches the end point (logit KD), the trajectory (features at paired
layers) and its first derivative (the change between consecutive paired layers):

    L = L_KD + alpha_traj * L_traj + beta_delta * L_delta
    L_traj  = mean_j  D(f_T(t_j), f_S(s_j))
    L_delta = mean_{j=2..K}  1 - cos(f_T(t_j) - f_T(t_{j-1}), f_S(s_j) - f_S(s_{j-1}))

with pairs (s_j, t_j) from the mapping, strictly increasing in both models.

Choices made where the paper is silent (encoder setting; the paper only runs causal LMs):
- `space=hidden`: f(l) = hidden_states[l] at every non-padding token (`tokens: cls` keeps the
  first token only); the student side goes through ONE learned `Linear(d_S, d_T)` shared by all
  paired layers when widths differ (identity when equal; `projection: none` refuses unequal
  widths instead). D is the MSE averaged over the feature dimension. A shared map keeps deltas
  consistent: W(a) - W(b) = W(a - b), so the delta term compares directions in one space.
- `space=head`: f(l) = log_softmax(head(h_l)) with each model's own classifier head (pooler +
  classifier on [CLS], no dropout) and D = KL(teacher || student) over labels; for regression
  (one output) f(l) is the head's real output and D is MSE. One value per example (no tokens).
- Reductions: per token over features, masked mean over tokens of each example, mean over the
  batch, mean over pairs (traj) or consecutive pairs (delta). cos uses eps = 1e-8.
- With a single pair the delta term is undefined: `beta_delta > 0` then fails at construction.
- L_KD is `kd`'s loss with this loss's `alpha`, `temperature`, `divergence`, `skew` and
  `chunk_size` (`FDDLoss` extends `KDLoss`, which holds and checks them; `alpha=0` reduces L_KD
  to CE).
- `space=logit_lens` (the paper's own, for causal LMs) is refused for sequence classifiers.
- `space=auto` (the default) is `hidden` for classifiers and `logit_lens` for causal LMs.

Causal-LM track (`space=logit_lens`, `losses/logit_lens.py`): f(l) = log_softmax(head(norm(h_l)))
with each model's own final norm and LM head, D = forward KL(teacher || student) per response
token, the delta cosine over the vocabulary; fp32, in chunks of `chunk_size` tokens. L_KD is the
token-level KD of `kd.py` (forward KL by default; the causal presets set `temperature: 1`). All
terms are means over response tokens. `hidden` and `head` are not offered on causal LMs (the paper
reports LM-head decoding beats a learned projection).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdsuite.losses.base import LossContext, check_choice
from kdsuite.losses.kd import KDLoss
from kdsuite.losses.logit_lens import COSINE_EPS, LogitLens, logit_lens_terms
from kdsuite.losses.teacher_reads import TeacherReads, not_cacheable
from kdsuite.mapping import LayerPairs

SPACES = ("auto", "hidden", "head", "logit_lens")
TOKENS = ("all", "cls")
PROJECTIONS = ("auto", "none")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid tokens of each example, then over examples: values (B, L), mask (B, L)."""
    mask = mask.to(values.dtype)
    per_example = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B,)
    return per_example.mean()


def trajectory_term(
    teacher_features: list[torch.Tensor],
    student_features: list[torch.Tensor],
    mask: torch.Tensor,
    distance: str = "mse",
) -> torch.Tensor:
    """`mean_j D(f_T(t_j), f_S(s_j))`; features are (B, L, d) per pair, mask (B, L).

    `distance="mse"`: squared error averaged over d; `"kl"`: KL(teacher || student) summed over
    d, for features that are log-probabilities.
    """
    per_pair = []
    for teacher, student in zip(teacher_features, student_features):
        if distance == "kl":
            per_token = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)  # (B, L)
        else:
            per_token = (teacher - student).pow(2).mean(dim=-1)  # (B, L)
        per_pair.append(masked_mean(per_token, mask))
    return torch.stack(per_pair).mean()


def delta_term(
    teacher_features: list[torch.Tensor], student_features: list[torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """`mean_{j>=2} 1 - cos(f_T(t_j) - f_T(t_{j-1}), f_S(s_j) - f_S(s_{j-1}))` over tokens.

    0 for parallel changes of any positive scale, 2 for opposite ones; 0 (not computed) with a
    single pair, where no change exists.
    """
    if len(teacher_features) < 2:
        return torch.zeros((), device=teacher_features[0].device)
    per_step = []
    for j in range(1, len(teacher_features)):
        teacher_delta = teacher_features[j] - teacher_features[j - 1]  # (B, L, d_T)
        student_delta = student_features[j] - student_features[j - 1]  # (B, L, d_T)
        cosine = F.cosine_similarity(teacher_delta, student_delta, dim=-1, eps=COSINE_EPS)  # (B, L)
        per_step.append(masked_mean(1.0 - cosine, mask))
    return torch.stack(per_step).mean()


def fdd_terms(
    logit_terms: dict[str, torch.Tensor],
    traj: torch.Tensor,
    delta: torch.Tensor | None,
    alpha_traj: float,
    beta_delta: float,
) -> dict[str, torch.Tensor]:
    """`L = L_KD + alpha_traj * L_traj + beta_delta * L_delta`, L_KD being `logit_terms["loss"]`.

    Returns the KD terms (`ce`, `kd`), `traj`, `delta` and the total `loss`. `delta` is None
    where it is undefined (a single layer pair): it is then neither added nor returned.
    """
    terms = {**logit_terms, "traj": traj}
    total = logit_terms["loss"] + alpha_traj * traj
    if delta is not None:
        terms["delta"] = delta
        total = total + beta_delta * delta
    terms["loss"] = total
    return terms


def classifier_head(model: nn.Module):
    """`hidden (B, L, d) -> logits (B, C)` through the model's own head, without dropout.

    BERT-style models pool [CLS] with `base_model.pooler` then apply `classifier`; RoBERTa-style
    heads (no pooler) take the sequence and pool [CLS] themselves.
    """
    pooler = getattr(model.base_model, "pooler", None)
    if pooler is not None:
        return lambda hidden: model.classifier(pooler(hidden))
    return lambda hidden: model.classifier(hidden)


class FDDLoss(KDLoss):
    """Feature dynamics distillation; see the module docstring for the equations and choices.

    L_KD is `KDLoss`'s, which this class extends: `kd_settings` are its `alpha`, `temperature`,
    `divergence`, `skew` and `chunk_size`, with its defaults and checks (`chunk_size` also
    bounds the logit-lens terms).
    """

    name = "fdd"
    needs_hidden_states = True
    needs_increasing_pairs = True

    def __init__(
        self,
        context: LossContext,
        alpha_traj: float = 1.0,
        beta_delta: float = 1.0,
        space: str = "auto",
        tokens: str = "all",
        projection: str = "auto",
        **kd_settings: Any,
    ):
        super().__init__(context, **kd_settings)
        check_choice("space", space, SPACES)
        check_choice("tokens", tokens, TOKENS)
        check_choice("projection", projection, PROJECTIONS)
        if space == "auto":
            space = "logit_lens" if self.token_level else "hidden"
        if space == "logit_lens" and not self.token_level:
            raise ValueError(
                f"loss.space=logit_lens decodes hidden states through a causal LM's head; task "
                f"{context.task.name!r} trains sequence classifiers: use space=hidden or space=head"
            )
        if space != "logit_lens" and self.token_level:
            raise ValueError(
                f"loss.space={space} is for sequence classifiers; task {context.task.name!r} trains "
                f"causal LMs: use space=logit_lens (or auto)"
            )
        if alpha_traj < 0 or beta_delta < 0:
            raise ValueError(f"loss.alpha_traj={alpha_traj} and loss.beta_delta={beta_delta} must be >= 0")
        if beta_delta > 0 and len(context.layer_pairs) < 2:
            raise ValueError(
                f"fdd's delta term needs at least 2 layer pairs, the mapping gives "
                f"{context.layer_pairs}: choose a mapping with more pairs or set loss.beta_delta=0"
            )
        self.alpha_traj, self.beta_delta = alpha_traj, beta_delta
        self.space, self.tokens = space, tokens
        self.layer_pairs: LayerPairs = list(context.layer_pairs)
        self.projection = self._projection(context, space, projection)
        self._heads = None  # (student_head, teacher_head) for space=head, set by bind_models
        self._lenses = None  # (student LogitLens, teacher LogitLens) for space=logit_lens

    @staticmethod
    def _projection(context: LossContext, space: str, projection: str) -> nn.Module:
        d_student, d_teacher = context.student_hidden_size, context.teacher_hidden_size
        if space != "hidden" or d_student == d_teacher:
            return nn.Identity()
        if projection == "none":
            raise ValueError(
                f"student hidden size {d_student} differs from the teacher's {d_teacher}: "
                f"fdd space=hidden needs loss.projection=auto (a learned Linear) for that"
            )
        return nn.Linear(d_student, d_teacher)

    def cached_teacher_reads(self, top_k: int | None = None) -> TeacherReads:
        """The mapped teacher layers' hidden states at every real token (`tokens=all`) or the first
        (`tokens=cls`, and `space=head`, whose head pools the first token), and L_KD's logits. The
        logit lens decodes every mapped layer over the vocabulary, which the store does not hold."""
        if self.space == "logit_lens":
            raise not_cacheable(self.name, f"(space={self.space}) decodes every mapped teacher layer over the "
                                           f"vocabulary, which the store does not hold (it keeps top-k "
                                           f"log-probabilities of the last layer for loss=kd)")
        return TeacherReads(hidden_layers=self.teacher_layers(), tokens="cls" if self.space == "head" else self.tokens)

    def bind_models(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if self.space == "head":
            self._heads = (classifier_head(student), classifier_head(teacher))
        if self.space == "logit_lens":
            self._lenses = (LogitLens(student), LogitLens(teacher))

    def features(self, student_out, teacher_out, mask):
        """Per pair: (teacher features, student features, token mask) in the `hidden` or `head` space."""
        student_hidden = [student_out.hidden_states[s] for s, _ in self.layer_pairs]  # K x (B, L, d_S)
        teacher_hidden = [teacher_out.hidden_states[t] for _, t in self.layer_pairs]  # K x (B, L, d_T)
        if self.space == "head":
            student_head, teacher_head = self._heads
            with torch.no_grad():
                teacher_feats = [teacher_head(h).float() for h in teacher_hidden]  # K x (B, C)
            student_feats = [student_head(h).float() for h in student_hidden]  # K x (B, C)
            if not self.is_regression:
                teacher_feats = [F.log_softmax(f, dim=-1) for f in teacher_feats]
                student_feats = [F.log_softmax(f, dim=-1) for f in student_feats]
            one_token = torch.ones(mask.shape[0], 1, device=mask.device, dtype=mask.dtype)
            return [f.unsqueeze(1) for f in teacher_feats], [f.unsqueeze(1) for f in student_feats], one_token
        if self.tokens == "cls":
            student_hidden = [h[:, :1] for h in student_hidden]
            teacher_hidden = [h[:, :1] for h in teacher_hidden]
            mask = mask[:, :1]
        student_feats = [self.projection(h.float()) for h in student_hidden]  # K x (B, L, d_T)
        return [h.float() for h in teacher_hidden], student_feats, mask

    def dynamics(self, student_out, teacher_out, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_traj, L_delta) in the chosen space; L_delta is 0 with a single pair."""
        if self.space == "logit_lens":
            student_lens, teacher_lens = self._lenses
            return logit_lens_terms(
                student_lens, teacher_lens, self.layer_pairs, student_out.hidden_states,
                teacher_out.hidden_states, batch["labels"], self.chunk_size,
            )
        teacher_feats, student_feats, mask = self.features(student_out, teacher_out, batch["attention_mask"])
        distance = "kl" if self.space == "head" and not self.is_regression else "mse"
        traj = trajectory_term(teacher_feats, student_feats, mask, distance)
        return traj, delta_term(teacher_feats, student_feats, mask)

    def forward(self, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
        logit_terms = super().forward(student_out, teacher_out, batch)
        traj, delta = self.dynamics(student_out, teacher_out, batch)
        has_delta = len(self.layer_pairs) > 1
        return fdd_terms(logit_terms, traj, delta if has_delta else None, self.alpha_traj, self.beta_delta)
