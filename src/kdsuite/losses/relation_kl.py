"""`relation_kl`: the KL between a teacher's and a student's softmax relations, as MiniLM reads
them (v1's attention distributions and value relation, v2's Q-Q, K-K and V-V relations), computed
one example at a time on its real tokens, with the student's gradient written out.

    R_h = softmax(Left_h Right_h^T / sqrt(d_h)) over the keys     (H, n, n) per example, n real tokens
    relation_kl = 1/B sum_b 1/(H n_b) sum_h sum_{i <= n_b} KL(R^T_{h,i} || R^S_{h,i})

This is `attention.row_kl` of `attention.masked_log_softmax` relations (the composed reference, which
the tests compare it with), restated for speed. The composed form makes about a dozen passes over
(B, H, L, L) tensors and keeps several of them for the backward: at MiniLM -> bert2l (24 relation
heads, batch 32, length 128), 50 MB each, the memory traffic that made the minilm step the
slowest of the encoder baselines (experiments/results/bench.md). Here:
- each example's (H, n, n) block is small enough to stay in cache for the few passes it needs,
  and padding costs nothing (its rows and keys are never formed, rather than masked);
- the backward keeps only the projections and recomputes the scores (a matmul over d_h = d / H,
  cheap), using d KL(p_T || softmax(s)) / d s = softmax(s) - p_T per row.

The teacher's projections get no gradient (they come from its no-grad forward, or from the store).
The arithmetic is in fp32 (fp64 inputs stay fp64), with autocast off, as in the composed form.

On a GPU the composed form is used: there a loop over examples costs kernel launches and a host
synchronisation per boolean index, the composed form's large batched kernels suit the device, and
no GPU has measured either yet. Both give the same numbers (tests/test_relation_kl.py).
"""

from __future__ import annotations

import math

import torch

from kdsuite.losses.attention import masked_log_softmax, row_kl, scaled_dot_products


def relation_kl(teacher: tuple[torch.Tensor, torch.Tensor], student: tuple[torch.Tensor, torch.Tensor],
                heads: int, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher relation || student relation) per (head, real query) row over the real keys, mean
    over heads and real queries per example, then over examples.

    `teacher` and `student` are (left, right) pairs of (B, L, d) projections, each model its own d
    (divisible by `heads`): (Q, K) for attention distributions, (X, X) for the relation of X.
    `mask` (B, L) marks the real tokens; an example without any adds 0."""
    for role, (left, right) in (("teacher", teacher), ("student", student)):
        if left.shape != right.shape or left.shape[-1] % heads:
            raise ValueError(f"{role} projections {tuple(left.shape)} and {tuple(right.shape)}: both (B, L, d) "
                             f"with d divisible by {heads} heads")
    if student[0].device.type != "cpu":  # see the module docstring: the per-example form is measured on CPUs only
        return row_kl(masked_log_softmax(scaled_dot_products(*teacher, heads), mask),
                      masked_log_softmax(scaled_dot_products(*student, heads), mask), mask)
    return _RelationKL.apply(*teacher, *student, heads, mask)


def _working_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(n, d) -> (H, n, d / H), in the working precision."""
    return x.to(_working_dtype(x)).view(x.shape[0], heads, -1).transpose(0, 1)


def _scores(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(H, n, d_h) x2 -> (H, n, n) scaled dot products."""
    return left @ right.transpose(-1, -2) / math.sqrt(left.shape[-1])


def _pair_rows(left, right, symmetric: bool, b: int, tokens, heads: int):
    """Example `b`'s real rows of a (left, right) pair, each (H, n, d_h); a relation's once."""
    left_rows = _heads(left[b, tokens], heads)
    return left_rows, left_rows if symmetric else _heads(right[b, tokens], heads)


def _per_example(real, lengths, heads: int, teacher: tuple, student: tuple):
    """`(b, n, tokens, teacher rows, student rows)` of every example with real tokens; `teacher`
    and `student` are (left, right, symmetric)."""
    for b, n in enumerate(lengths):
        if n:
            tokens = real[b]
            yield b, n, tokens, _pair_rows(*teacher, b, tokens, heads), _pair_rows(*student, b, tokens, heads)


class _RelationKL(torch.autograd.Function):
    """Forward and backward one example at a time. A relation (left is right, `X X^T`) gathers
    its rows once and gets one gradient, (G + G^T) X."""

    @staticmethod
    def forward(ctx, t_left, t_right, s_left, s_right, heads: int, mask):
        real = mask.bool()
        lengths = real.sum(dim=1).tolist()
        total = torch.zeros((), dtype=_working_dtype(s_left), device=s_left.device)
        with torch.autocast(s_left.device.type, enabled=False):
            examples = _per_example(real, lengths, heads, (t_left, t_right, t_right is t_left),
                                    (s_left, s_right, s_right is s_left))
            for _, n, _, teacher_rows, student_rows in examples:
                teacher_log = torch.log_softmax(_scores(*teacher_rows), dim=-1)
                student_log = torch.log_softmax(_scores(*student_rows), dim=-1)
                total += (teacher_log.exp() * (teacher_log - student_log)).sum() / (heads * n)
        ctx.save_for_backward(t_left, t_right, s_left, s_right, real)
        ctx.heads, ctx.lengths = heads, lengths
        ctx.teacher_symmetric, ctx.symmetric = t_right is t_left, s_right is s_left
        return total / len(lengths)

    @staticmethod
    def backward(ctx, grad_output):
        t_left, t_right, s_left, s_right, real = ctx.saved_tensors
        heads, lengths, symmetric = ctx.heads, ctx.lengths, ctx.symmetric
        need_left = ctx.needs_input_grad[2]
        need_right = ctx.needs_input_grad[3] and not symmetric  # a relation's one gradient goes to `left`
        dtype = _working_dtype(s_left)
        grad_left = torch.zeros(s_left.shape, dtype=dtype, device=s_left.device) if need_left else None
        grad_right = torch.zeros(s_right.shape, dtype=dtype, device=s_right.device) if need_right else None
        with torch.autocast(s_left.device.type, enabled=False):
            examples = _per_example(real, lengths, heads, (t_left, t_right, ctx.teacher_symmetric),
                                    (s_left, s_right, symmetric))
            for b, n, tokens, teacher_rows, (left, right) in examples:
                teacher = torch.softmax(_scores(*teacher_rows), dim=-1)
                student = torch.softmax(_scores(left, right), dim=-1)
                scale = grad_output.to(dtype) / (len(lengths) * heads * n * math.sqrt(left.shape[-1]))
                grad_scores = (student - teacher) * scale  # d loss / d (left @ right^T), (H, n, n)
                if symmetric:  # d/dX of X X^T: (G + G^T) X
                    if need_left:
                        grad_left[b, tokens] = ((grad_scores + grad_scores.transpose(-1, -2)) @ left
                                                ).transpose(0, 1).reshape(n, -1)
                    continue
                if need_left:
                    grad_left[b, tokens] = (grad_scores @ right).transpose(0, 1).reshape(n, -1)
                if need_right:
                    grad_right[b, tokens] = (grad_scores.transpose(-1, -2) @ left).transpose(0, 1).reshape(n, -1)
        return (None, None,
                None if grad_left is None else grad_left.to(s_left.dtype),
                None if grad_right is None else grad_right.to(s_right.dtype),
                None, None)
