"""`loss=pkd`: the patient term against a float64 computation written here from the paper's
equation with the official reduction (which sets beta's scale), the pairs it uses, gradients and
the settings it refuses."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from tiny_encoders import context_for, tiny_bert

from kdsuite.losses.pkd import PKDLoss, patient_pairs

ALPHA, T, BETA = 0.7, 10.0, 500.0


def outputs(layers, batch, length, width, classes, seed, grad=False):
    generator = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(batch, length, width, generator=generator, dtype=torch.float64, requires_grad=grad)
                   for _ in range(layers + 1))
    logits = torch.randn(batch, classes, generator=generator, dtype=torch.float64, requires_grad=grad)
    return SimpleNamespace(hidden_states=hidden, logits=logits)


def reference(student, teacher, labels, pairs, d):
    """(1 - a) CE + a (T^2 / C) KL + beta * (1 / (B K d)) sum_b sum_j ||h_S/|h_S| - h_T/|h_T|||^2, float64
    loops; KL is divided by the C classes as the official KLDivLoss(reduction='mean') over (B, C) does."""
    batch = labels.shape[0]
    ce = kl = 0.0
    for b in range(batch):
        zs, zt = student.logits[b].tolist(), teacher.logits[b].tolist()
        log_sum = math.log(sum(math.exp(z) for z in zs))
        ce += (log_sum - zs[int(labels[b])]) / batch
        ps = [math.exp(z / T) for z in zs]
        pt = [math.exp(z / T) for z in zt]
        ps, pt = [p / sum(ps) for p in ps], [p / sum(pt) for p in pt]
        kl += T * T * sum(t * math.log(t / s) for s, t in zip(ps, pt)) / (batch * len(zs))
    patience = 0.0
    for s, t in pairs:
        for b in range(batch):
            hs, ht = student.hidden_states[s][b, 0].tolist(), teacher.hidden_states[t][b, 0].tolist()
            ns, nt = math.sqrt(sum(x * x for x in hs)), math.sqrt(sum(x * x for x in ht))
            patience += sum((x / ns - y / nt) ** 2 for x, y in zip(hs, ht)) / (batch * len(pairs) * d)
    return ce, kl, patience


def test_terms_and_total_match_the_paper_with_the_official_reduction():
    student_model, teacher_model = tiny_bert(3, 8, 2), tiny_bert(6, 8, 2)
    loss = PKDLoss(context_for(student_model, teacher_model, [(1, 2), (2, 4), (3, 6)]))
    assert loss.pairs_used == [(1, 2), (2, 4)]  # the teacher's top block 6 is dropped
    student = outputs(3, 4, 5, 8, 3, seed=1, grad=True)  # three classes
    teacher = outputs(6, 4, 5, 8, 3, seed=2)
    labels = torch.tensor([0, 1, 2, 0])
    terms = loss(student, teacher, {"labels": labels, "attention_mask": torch.ones(4, 5)})
    ce, kl, patience = reference(student, teacher, labels, [(1, 2), (2, 4)], 8)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["kd"].item() == pytest.approx(kl, rel=1e-5)
    assert terms["pt"].item() == pytest.approx(patience, rel=1e-5)
    assert terms["loss"].item() == pytest.approx((1 - ALPHA) * ce + ALPHA * kl + BETA * patience, rel=1e-5)
    official = torch.nn.KLDivLoss(reduction="mean")(torch.log_softmax(student.logits / T, dim=1),
                                                    torch.softmax(teacher.logits / T, dim=1)) * T * T
    assert terms["kd"].item() == pytest.approx(official.item(), rel=1e-5)  # the official code's expression

    # gradient of the patient term on h_S(s_j)[CLS]: beta/(B K d) * d/dh ||h/|h| - u||^2
    terms["loss"].backward()
    h = student.hidden_states[1][:, 0].detach()
    u = torch.nn.functional.normalize(teacher.hidden_states[2][:, 0], dim=-1)
    norm = h.norm(dim=-1, keepdim=True)
    diff = h / norm - u
    projected = diff - (diff * h).sum(-1, keepdim=True) * h / norm**2
    expected = BETA / (4 * 2 * 8) * 2 * projected / norm
    torch.testing.assert_close(student.hidden_states[1].grad[:, 0], expected, rtol=1e-4, atol=1e-9)
    assert student.hidden_states[1].grad[:, 1:].abs().sum() == 0  # the first token only
    assert student.hidden_states[3].grad is None  # the student's last block is not a patient layer


def test_pairs_come_from_the_teacher_model_when_the_context_lacks_its_architecture():
    student_model, teacher_model = tiny_bert(2, 8, 2), tiny_bert(4, 8, 2)
    loss = PKDLoss(context_for(student_model, teacher_model, [(1, 2), (2, 4)], with_architectures=False))
    assert loss.pairs_used is None
    loss.bind_models(student_model, teacher_model)
    assert loss.pairs_used == loss.layer_pairs == [(1, 2)]


def test_skip_and_last_mappings_keep_every_pair():
    assert patient_pairs([(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)], 12) == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]
    assert patient_pairs([(1, 7), (2, 8), (3, 9), (4, 10), (5, 11)], 12) == [(1, 7), (2, 8), (3, 9), (4, 10), (5, 11)]
    assert patient_pairs([(1, 6), (2, 12)], 12) == [(1, 6)]


def test_regression_uses_mse_and_unnormalised_patience_is_plain_mse():
    student_model, teacher_model = tiny_bert(2, 8, 2, num_labels=1), tiny_bert(4, 8, 2, num_labels=1)
    loss = PKDLoss(context_for(student_model, teacher_model, [(1, 2), (2, 4)], task="stsb"), normalize=False, beta=2.0)
    student, teacher = outputs(2, 3, 4, 8, 1, seed=3), outputs(4, 3, 4, 8, 1, seed=4)
    labels = torch.tensor([0.5, 2.0, 4.5], dtype=torch.float64)
    terms = loss(student, teacher, {"labels": labels, "attention_mask": torch.ones(3, 4)})
    assert terms["ce"].item() == pytest.approx(((student.logits[:, 0] - labels) ** 2).mean().item(), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(((student.logits - teacher.logits) ** 2).mean().item(), rel=1e-5)
    plain = ((student.hidden_states[1][:, 0] - teacher.hidden_states[2][:, 0]) ** 2).mean()
    assert terms["pt"].item() == pytest.approx(plain.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("settings", "pairs", "message"),
    [
        ({"beta": -1.0}, [(1, 2)], "loss.beta=-1.0 must be >= 0"),
        ({"alpha": 1.5}, [(1, 2)], r"loss.alpha=1.5 must lie in \[0, 1\]"),
        ({"temperature": -2.0}, [(1, 2)], "loss.temperature=-2.0 must be > 0"),
        ({}, [(1, 4)], r"no patient pair is left for loss.beta=500.0: use mapping=skip or mapping=last"),
    ],
)
def test_bad_settings_name_the_key(settings, pairs, message):
    student_model, teacher_model = tiny_bert(1, 8, 2), tiny_bert(4, 8, 2)
    with pytest.raises(ValueError, match=message):
        PKDLoss(context_for(student_model, teacher_model, pairs), **settings)


def test_unequal_widths_and_causal_tasks_are_refused():
    student_model, teacher_model = tiny_bert(2, 8, 2), tiny_bert(4, 12, 2)
    with pytest.raises(ValueError, match="the student's width 8 differs from the teacher's 12"):
        PKDLoss(context_for(student_model, teacher_model, [(1, 2)]))
    with pytest.raises(ValueError, match="loss=pkd distils BERT-style sequence classifiers.*task 'dolly'"):
        PKDLoss(context_for(student_model, tiny_bert(4, 8, 2), [(1, 2)], task="dolly"))
