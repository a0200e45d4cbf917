"""What the losses that read self-attention share: the query/key/value projections of chosen
blocks, captured by forward hooks, and the scores, distributions and relations computed on them.

Why hooks: in transformers 5 an `sdpa` model asked for `output_attentions=True` only warns and
returns an empty `attentions` tuple; switching the models to `eager` attention would change them
and still not return the values MiniLM's value relation needs. On a 2-core CPU the two routes cost
about the same (`experiments/bench/bench_attention_capture.py`, docs/losses/minilm.md). The projections
are the inputs of the attention kernel, so everything TinyBERT and MiniLM read can be recomputed
from them exactly, while both models keep SDPA:

    A_h   = Q_h K_h^T / sqrt(d_h)                    scores of head h (TinyBERT reads these)
    P_h   = softmax(A_h) over the non-padding keys    attention distribution (MiniLM v1)
    R_a^X = softmax(X_a X_a^T / sqrt(d_r))            relation of X in {Q, K, V} split into
                                                      `a` relation heads of d_r = d / a (MiniLM v2;
                                                      MiniLM v1's value relation is R^V over the
                                                      model's own attention heads)

Hooks: `ProjectionCapture(model, layers)` registers one forward hook on each of
`base_model.encoder.layer[l - 1].attention.self.{query,key,value}` (BERT and RoBERTa in
transformers 5.25); each keeps the latest output of its Linear, (B, L, d), overwriting the
previous one. The student's outputs keep their autograd graph (the loss backpropagates through
them), the teacher's come from its no-grad forward. Under DDP the hooks sit on the inner modules
of the wrapped student and fire as usual. The loss clears the captured tensors after each call,
so no step's activations outlive it; a forward that no loss call follows (the student's
evaluation, a gradient-checkpointing recompute) leaves at most one forward's projections until the
next forward overwrites them. Under `teacher.outputs=cached` the teacher runs no forward while the
student trains: its projections come from the teacher-output store (`teacher_projection`), which
the same hooks filled in one pass over the training set, at the pass's precision (lossless).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from kdsuite.losses.fdd import masked_mean

PROJECTIONS = ("query", "key", "value")


def encoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks, `base_model.encoder.layer` (BERT, RoBERTa, ...)."""
    blocks = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if blocks is None:
        raise ValueError(
            f"{type(model).__name__} has no BERT-style encoder (base_model.encoder.layer): the attention "
            f"losses (tinybert, minilm) capture query/key/value there and support BERT-style encoders only"
        )
    return blocks


class ProjectionCapture:
    """Forward hooks keeping the query/key/value projection outputs of some blocks of one model.

    `layers` are 1-based block indices, as in the layer mapping. `outputs[(layer, projection)]`
    is the latest (B, L, d) output; `clear()` drops them, `remove()` takes the hooks off.
    """

    def __init__(self, model: nn.Module, layers: Iterable[int], projections: Iterable[str] = PROJECTIONS):
        blocks = encoder_blocks(model)
        self.num_heads = int(model.config.num_attention_heads)
        self.outputs: dict[tuple[int, str], torch.Tensor] = {}
        self.handles = []
        for layer in sorted(set(layers)):
            if not 1 <= layer <= len(blocks):
                raise ValueError(f"block {layer} is out of range 1..{len(blocks)} of {type(model).__name__}")
            attention = blocks[layer - 1].attention.self
            for name in projections:
                hook = self._keeper((layer, name))
                self.handles.append(getattr(attention, name).register_forward_hook(hook))

    def _keeper(self, key: tuple[int, str]):
        def keep(module, inputs, output):
            self.outputs[key] = output
        return keep

    def get(self, layer: int, projection: str) -> torch.Tensor:
        try:
            return self.outputs[(layer, projection)]
        except KeyError:
            raise RuntimeError(
                f"no {projection} projection of block {layer} was captured: the model's forward must run "
                f"after bind_models(student, teacher) and before each loss call"
            ) from None

    def clear(self) -> None:
        self.outputs.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.outputs = [], {}


def teacher_projection(teacher_out, capture: ProjectionCapture, layer: int, projection: str) -> torch.Tensor:
    """The teacher's `projection` of block `layer`, (B, L, d): read back from the teacher-output
    store when the run reads its teacher from there (`teacher.outputs=cached`: the teacher runs no
    forward, so its hooks never fire), else the one its hook captured in this step's forward."""
    stored = getattr(teacher_out, "projections", None)
    if stored:
        return stored[(layer, projection)]
    return capture.get(layer, projection)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, d) -> (B, num_heads, L, d / num_heads), in fp32."""
    batch, length, width = x.shape
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by {num_heads} heads")
    return x.float().view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def scaled_dot_products(left: torch.Tensor, right: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`X_h Y_h^T / sqrt(d_h)` per head: (B, L, d) x2 -> (B, num_heads, L, L)."""
    left_heads, right_heads = split_heads(left, num_heads), split_heads(right, num_heads)  # (B, H, L, d_h)
    return left_heads @ right_heads.transpose(-1, -2) / math.sqrt(left_heads.shape[-1])


def masked_log_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax over the keys (last dim) of (B, H, L, L), padding keys excluded (mask (B, L)).

    Padding keys get the dtype's lowest value rather than -inf, so their probability is exactly 0
    and no inf - inf appears in a KL.
    """
    key_mask = mask.bool()[:, None, None, :]  # (B, 1, 1, L)
    return F.log_softmax(scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min), dim=-1)


def row_kl(teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`KL(teacher || student)` of every (head, query) row over the non-padding keys; mean over
    heads and the non-padding queries of each example, then over examples.

    Both inputs (B, H, L, L) log-probabilities (same H), mask (B, L).
    Padding keys have teacher probability exactly 0 (`masked_log_softmax`), so they add exactly 0.
    """
    pointwise = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="none")  # (B, H, L, L)
    return masked_mean(pointwise.sum(dim=-1).mean(dim=1), mask)  # per row (B, H, L) -> per query (B, L)


def relation_log_probs(x: torch.Tensor, num_heads: int, mask: torch.Tensor) -> torch.Tensor:
    """`log softmax(X_a X_a^T / sqrt(d / a))` over the non-padding keys: (B, L, d) -> (B, a, L, L)."""
    return masked_log_softmax(scaled_dot_products(x, x, num_heads), mask)


def attention_log_probs(query: torch.Tensor, key: torch.Tensor, num_heads: int, mask: torch.Tensor) -> torch.Tensor:
    """The model's attention distributions `softmax(Q_h K_h^T / sqrt(d_h))`, padding keys excluded:
    (B, L, d) x2 -> (B, H, L, L) log-probabilities."""
    return masked_log_softmax(scaled_dot_products(query, key, num_heads), mask)


def gradient_anchor(student_out, loss: nn.Module) -> torch.Tensor:
    """A zero that depends on the student's logits and on every parameter of `loss`.

    Added to a total that reads only some of the student's outputs (TinyBERT's intermediate stage
    leaves the classifier out, its prediction stage the projections W_h and W_e), it gives the
    unread parameters a zero gradient instead of none: DDP without `find_unused_parameters` (the
    suite's default) waits for a gradient of every parameter and fails at the next step
    otherwise. The step is the same as without it, except that decoupled weight decay (AdamW)
    also applies to those parameters.
    """
    anchor = student_out.logits.float().sum() * 0.0
    for parameter in loss.parameters():
        anchor = anchor + parameter.sum() * 0.0
    return anchor
