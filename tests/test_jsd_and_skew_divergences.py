"""GKD's generalized JSD and DistiLLM's skew reverse KL against independent float64 computations:
values, gradients with respect to the student's logits, the two ends of beta (forward and reverse
KL, TRL's convention) and the limits the mixture formula tends to there; bad beta refused."""

import math

import pytest
import torch

from kdsuite.losses.base import LossContext
from kdsuite.losses.kd import KDLoss, causal_kd_terms
from kdsuite.losses.tokens import TopKLogProbs, causal_kd, token_divergence
from kdsuite.tracks import get_task

P = [0.7, 0.2, 0.1]  # teacher
Q = [0.5, 0.3, 0.2]  # student


def log(values):
    return torch.tensor([values], dtype=torch.float64).log()


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def jsd_by_hand(p, q, beta):
    mixture = [beta * x + (1 - beta) * y for x, y in zip(p, q)]
    return beta * kl(p, mixture) + (1 - beta) * kl(q, mixture)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_the_mixture_formula(beta):
    value = token_divergence(log(P), log(Q), "jsd", beta=beta).item()
    assert value == pytest.approx(jsd_by_hand(P, Q, beta), rel=1e-12)
    assert token_divergence(log(P), log(P), "jsd", beta=beta).item() == pytest.approx(0.0, abs=1e-15)


def test_jsd_at_one_half_is_the_symmetric_jensen_shannon_divergence():
    forward = token_divergence(log(P), log(Q), "jsd", beta=0.5).item()
    swapped = token_divergence(log(Q), log(P), "jsd", beta=0.5).item()
    assert forward == pytest.approx(swapped, rel=1e-12) and 0 < forward <= math.log(2)


def test_jsd_ends_are_forward_and_reverse_kl_and_the_formula_tends_to_them():
    """beta = 0 is KL(p || q), beta = 1 KL(q || p) (TRL); the mixture formula itself vanishes at the
    ends, as beta * KL(p || q) near 0 and (1 - beta) * KL(q || p) near 1."""
    assert token_divergence(log(P), log(Q), "jsd", beta=0.0).item() == pytest.approx(kl(P, Q), rel=1e-12)
    assert token_divergence(log(P), log(Q), "jsd", beta=1.0).item() == pytest.approx(kl(Q, P), rel=1e-12)
    for small in (1e-4, 1e-6):
        near_zero = token_divergence(log(P), log(Q), "jsd", beta=small).item()
        near_one = token_divergence(log(P), log(Q), "jsd", beta=1 - small).item()
        assert near_zero / small == pytest.approx(kl(P, Q), rel=10 * small)
        assert near_one / small == pytest.approx(kl(Q, P), rel=10 * small)


def test_skew_reverse_kl_matches_distillm():
    """KL(q || a*q + (1-a)*p): DistiLLM's `skewed_reverse_kl` mixes (1 - lam) * teacher + lam * student."""
    for skew in (0.1, 0.5):
        mixture = [skew * q + (1 - skew) * p for p, q in zip(P, Q)]
        value = token_divergence(log(P), log(Q), "skew_reverse_kl", skew=skew).item()
        assert value == pytest.approx(kl(Q, mixture), rel=1e-12)
    assert token_divergence(log(P), log(Q), "skew_reverse_kl", skew=0.1).item() != pytest.approx(
        token_divergence(log(P), log(Q), "skew_kl", skew=0.1).item())
    assert token_divergence(log(P), log(P), "skew_reverse_kl", skew=0.1).item() == pytest.approx(0.0, abs=1e-15)


def reference_divergence(teacher_logits, student_logits, divergence, beta=0.5, skew=0.1):
    """The same divergences written with probabilities (no log-space mixtures), float64."""
    p, q = teacher_logits.softmax(-1), student_logits.softmax(-1)

    def kl_rows(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    if divergence == "jsd":
        mixture = beta * p + (1 - beta) * q
        return beta * kl_rows(p, mixture) + (1 - beta) * kl_rows(q, mixture)
    return kl_rows(q, skew * q + (1 - skew) * p)  # skew_reverse_kl


@pytest.mark.parametrize("divergence,beta", [("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9), ("skew_reverse_kl", 0.5)])
def test_causal_kd_value_and_gradient_match_a_float64_reference(divergence, beta):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 11, (2, 7), generator=generator)
    labels[0, :3] = -100
    labels[1, :2] = -100
    labels[1, 6:] = -100
    teacher = torch.randn(2, 7, 11, generator=generator, dtype=torch.float64)
    student = torch.randn(2, 7, 11, generator=generator, dtype=torch.float64, requires_grad=True)
    temperature = 2.0
    value = causal_kd(student, teacher, labels, divergence, temperature, 0.1, 3, beta)
    (grad,) = torch.autograd.grad(value, student)

    reference_student = student.detach().clone().requires_grad_(True)
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != -100
    per_token = reference_divergence(teacher[positions] / temperature, reference_student[positions] / temperature,
                                     divergence, beta)
    reference = temperature**2 * per_token.mean()
    (reference_grad,) = torch.autograd.grad(reference, reference_student)
    assert value.item() == pytest.approx(reference.item(), rel=1e-10)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-9, atol=1e-12)
    assert grad[~positions].abs().max() == 0  # prompt and padding positions get no gradient


def test_jsd_on_cached_top_k_buckets_equals_jsd_on_the_full_vocabulary_when_k_covers_it():
    generator = torch.Generator().manual_seed(3)
    labels = torch.tensor([[-100, -100, 1, 2, 3]])
    teacher = torch.randn(1, 5, 6, generator=generator, dtype=torch.float64)
    student = torch.randn(1, 5, 6, generator=generator, dtype=torch.float64)
    positions = torch.tensor([[False, True, True, True, False]])
    log_probs = teacher[positions].log_softmax(-1)
    top, ids = log_probs.topk(5, dim=-1)
    cached = TopKLogProbs(top, ids, TopKLogProbs.tail_of(top))
    full = causal_kd(student, teacher, labels, "jsd", 1.0, 0.1, 2, 0.3)
    assert causal_kd(student, cached, labels, "jsd", 1.0, 0.1, 2, 0.3).item() == pytest.approx(full.item(), rel=1e-9)


def test_kd_loss_uses_beta_and_refuses_it_outside_the_unit_interval():
    context = LossContext(get_task("dolly"))
    loss = KDLoss(context, alpha=1.0, temperature=1.0, divergence="jsd", beta=0.9)
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 5, 9, generator=generator)
    labels = torch.tensor([[-100, 1, 2, 3, 4], [-100, -100, 5, 6, -100]])
    student, teacher = type("Out", (), {"logits": logits[0]}), type("Out", (), {"logits": logits[1]})
    terms = loss(student, teacher, {"labels": labels})
    expected = causal_kd_terms(logits[0], logits[1], labels, 1.0, 1.0, "jsd", beta=0.9)["kd"]
    other = causal_kd_terms(logits[0], logits[1], labels, 1.0, 1.0, "jsd", beta=0.1)["kd"]
    assert terms["kd"].item() == pytest.approx(expected.item()) and terms["kd"].item() != pytest.approx(other.item())
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"loss.beta={bad} must lie in \[0, 1\]"):
            KDLoss(context, divergence="jsd", beta=bad)
    with pytest.raises(ValueError, match="loss.divergence='jsd2' is not one of .*'skew_reverse_kl', 'jsd'"):
        KDLoss(context, divergence="jsd2")
