"""`relation_kl` (MiniLM's KLs, per example on real tokens, gradient written out) against the
composed form it restates (`attention.row_kl` of masked log-softmax relations over padded
tensors): values and gradients, with padding anywhere, an example with no real token, unequal
widths, and float64 gradcheck."""

import pytest
import torch

from kdsuite.losses.attention import attention_log_probs, relation_log_probs, row_kl
from kdsuite.losses.relation_kl import relation_kl

HEADS = 3


def padded_mask():
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    mask[2, [0, 4]] = 0  # holes, as no collator makes them
    mask[3] = 0  # no real token: adds 0, as masked_mean's clamp makes it in the composed form
    return mask


def projections(width, seed, grad=False, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 9, width, generator=generator, dtype=dtype).requires_grad_(grad) for _ in range(2)]


def test_attention_distributions_match_the_composed_form():
    mask = padded_mask()
    (tq, tk), (sq, sk) = projections(24, 0), projections(12, 1, grad=True)
    composed = row_kl(attention_log_probs(tq, tk, HEADS, mask), attention_log_probs(sq, sk, HEADS, mask), mask)
    expected = torch.autograd.grad(composed, (sq, sk))
    fused = relation_kl((tq, tk), (sq, sk), HEADS, mask)
    assert fused.item() == pytest.approx(composed.item(), rel=1e-6)
    for mine, theirs in zip(torch.autograd.grad(fused, (sq, sk)), expected):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)
    assert fused.item() > 0


def test_a_relation_gets_both_gradients_of_its_one_tensor():
    mask = padded_mask()
    teacher, (student, _) = projections(24, 2)[0], projections(12, 3, grad=True)
    composed = row_kl(relation_log_probs(teacher, HEADS, mask), relation_log_probs(student, HEADS, mask), mask)
    [expected] = torch.autograd.grad(composed, student)
    fused = relation_kl((teacher, teacher), (student, student), HEADS, mask)
    [mine] = torch.autograd.grad(fused, student)
    assert fused.item() == pytest.approx(composed.item(), rel=1e-6)
    torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-7)
    assert mine[3].abs().max() == 0 and mine[1, 6:].abs().max() == 0  # padding gets no gradient


def test_float64_gradcheck_and_zero_for_equal_relations():
    mask = padded_mask()
    teacher = projections(6, 4, dtype=torch.float64)[0]
    student = projections(6, 5, grad=True, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda left, right: relation_kl((teacher, teacher), (left, right), HEADS, mask),
                                    tuple(student))
    assert torch.autograd.gradcheck(lambda x: relation_kl((teacher, teacher), (x, x), HEADS, mask), (student[0],))
    same = relation_kl((teacher, teacher), (teacher.clone().requires_grad_(), teacher), HEADS, mask)
    assert same.item() == pytest.approx(0.0, abs=1e-12)


def test_bf16_projections_are_computed_in_fp32_and_get_bf16_gradients():
    mask = padded_mask()
    teacher = [x.bfloat16() for x in projections(24, 6)]
    student = [x.bfloat16().requires_grad_() for x in projections(12, 7)]
    as_fp32 = [x.detach().float().requires_grad_() for x in student]  # the same values, in fp32
    composed = row_kl(attention_log_probs(*teacher, HEADS, mask), attention_log_probs(*as_fp32, HEADS, mask), mask)
    composed.backward()
    fused = relation_kl(tuple(teacher), tuple(student), HEADS, mask)
    fused.backward()
    assert fused.dtype == torch.float32 and fused.item() == pytest.approx(composed.item(), rel=1e-6)
    for mine, reference in zip(student, as_fp32):
        assert mine.grad.dtype == torch.bfloat16
        torch.testing.assert_close(mine.grad, reference.grad.bfloat16())


def test_widths_the_heads_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="divisible by 5 heads"):
        relation_kl(tuple(projections(24, 0)), tuple(projections(12, 1)), 5, padded_mask())
