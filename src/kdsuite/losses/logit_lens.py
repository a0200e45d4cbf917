"""FDD's `logit_lens` feature space for causal LMs: every model decodes its own hidden states
through its own final norm and LM head, `f(l) = log_softmax(head(norm(h_l)))`, per response token.

Hugging Face decoders (GPT-2, LLaMA, ...) apply the final norm before returning the LAST hidden
state, so `f(L)` is `log_softmax(head(h_L))` (the model's own logits) and only `l < L` goes through
the norm; normalising twice would distort the top layer.

The trajectory and delta terms (see `fdd.py`) are computed per response token in fp32, in chunks
of tokens under activation checkpointing (`tokens.chunked_sum`): K pairs x chunk x V at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsuite.losses.tokens import at_least_fp32, chunked_sum, response_positions

NORM_NAMES = ("ln_f", "norm", "final_layer_norm", "final_layernorm")
COSINE_EPS = 1e-8


def _transformers_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class LogitLens:
    """Decodes hidden states of block `l` of one causal LM through its final norm and LM head.

    Holds plain references (no submodules): the models belong to the run, not to the loss.
    """

    def __init__(self, model: nn.Module):
        hf_model = _transformers_model(model)
        self.head = hf_model.get_output_embeddings()
        backbone = hf_model.base_model
        self.norm = next((getattr(backbone, name) for name in NORM_NAMES if hasattr(backbone, name)), None)
        if self.head is None or self.norm is None:
            raise ValueError(
                f"loss.space=logit_lens needs a causal LM with an LM head and a final norm named one "
                f"of {list(NORM_NAMES)} on its backbone; {type(hf_model).__name__} has "
                f"head={type(self.head).__name__}, backbone={type(backbone).__name__}"
            )
        self.num_layers = hf_model.config.num_hidden_layers

    def log_probs(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """(N, d) hidden states of block `layer` -> (N, V) log-probabilities, at least fp32."""
        if layer < self.num_layers:
            hidden = self.norm(hidden)
        return F.log_softmax(at_least_fp32(self.head(hidden)), dim=-1)


def logit_lens_terms(
    student_lens: LogitLens,
    teacher_lens: LogitLens,
    pairs: list[tuple[int, int]],
    student_hidden: tuple[torch.Tensor, ...],
    teacher_hidden: tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_traj, L_delta) over the response tokens of the batch.

    L_traj  = mean_{j, tokens} KL(f_T(t_j) || f_S(s_j))
    L_delta = mean_{j>=2, tokens} 1 - cos(f_T(t_j) - f_T(t_{j-1}), f_S(s_j) - f_S(s_{j-1}))
    with the cosine over the vocabulary. L_delta is 0 (not computed) with a single pair.
    """
    positions = response_positions(labels)
    count = int(positions.sum())
    if count == 0:
        zero = student_hidden[0].sum() * 0.0
        return zero, zero
    student_layers = [s for s, _ in pairs]
    teacher_layers = [t for _, t in pairs]
    student_stack = torch.stack([student_hidden[s][positions] for s in student_layers], dim=1)  # (N, K, d_S)
    teacher_stack = torch.stack([teacher_hidden[t][positions] for t in teacher_layers], dim=1).detach()

    def per_chunk(student_chunk: torch.Tensor, teacher_chunk: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_feats = [teacher_lens.log_probs(teacher_chunk[:, j], t) for j, t in enumerate(teacher_layers)]
        student_feats = [student_lens.log_probs(student_chunk[:, j], s) for j, s in enumerate(student_layers)]
        if teacher_feats[0].shape[-1] != student_feats[0].shape[-1]:
            raise ValueError(
                f"logit lens: the student decodes into {student_feats[0].shape[-1]} tokens, the teacher "
                f"into {teacher_feats[0].shape[-1]}: teacher and student must share a vocabulary"
            )
        traj = sum(
            F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1).sum()
            for teacher, student in zip(teacher_feats, student_feats)
        )
        delta = torch.zeros((), device=traj.device, dtype=traj.dtype)
        for j in range(1, len(pairs)):
            cosine = F.cosine_similarity(
                teacher_feats[j] - teacher_feats[j - 1], student_feats[j] - student_feats[j - 1],
                dim=-1, eps=COSINE_EPS,
            )  # (N_c,)
            delta = delta + (1.0 - cosine).sum()
        return torch.stack([traj, delta])

    sums = chunked_sum(per_chunk, (student_stack, teacher_stack), chunk_size)
    traj = sums[0] / (count * len(pairs))
    delta = sums[1] / (count * (len(pairs) - 1)) if len(pairs) > 1 else sums[1] * 0.0
    return traj, delta
