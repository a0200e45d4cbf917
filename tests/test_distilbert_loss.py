"""`loss=distilbert`: its soft-target, task and cosine terms against float64 computations written
here from the paper and the transformers distillation example, gradients and refusals."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import CONF_DIR
from omegaconf import OmegaConf
from tiny_encoders import context_for, tiny_bert

from kdsuite.losses.distilbert import DistilBERTLoss

LENGTHS = [5, 3, 1]


def outputs(seed, classes=3, width=6, grad=False):
    generator = torch.Generator().manual_seed(seed)
    last = torch.randn(3, 5, width, generator=generator, dtype=torch.float64, requires_grad=grad)
    logits = torch.randn(3, classes, generator=generator, dtype=torch.float64, requires_grad=grad)
    return SimpleNamespace(hidden_states=(None, last), logits=logits)


def test_terms_values_and_gradients_match_the_example():
    model = tiny_bert(1, 6, 2, num_labels=3)
    loss = DistilBERTLoss(context_for(model, model, [(1, 1)]), alpha_ce=5.0, alpha_task=2.0, alpha_cos=1.0)
    student, teacher = outputs(1, grad=True), outputs(2)
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in LENGTHS])
    labels = torch.tensor([2, 0, 1])
    terms = loss(student, teacher, {"labels": labels, "attention_mask": mask})

    t, kd, ce, cosines = 2.0, 0.0, 0.0, []
    for b in range(3):
        zs, zt = student.logits[b].tolist(), teacher.logits[b].tolist()
        ps, pt = [math.exp(z / t) for z in zs], [math.exp(z / t) for z in zt]
        ps, pt = [p / sum(ps) for p in ps], [p / sum(pt) for p in pt]
        kd += t * t * sum(q * math.log(q / p) for p, q in zip(ps, pt)) / 3  # KLDivLoss 'batchmean' * T^2
        ce += (math.log(sum(math.exp(z) for z in zs)) - zs[int(labels[b])]) / 3
        for position in range(LENGTHS[b]):  # every non-padding token of the batch, flattened
            hs, ht = student.hidden_states[1][b, position].tolist(), teacher.hidden_states[1][b, position].tolist()
            dot = sum(x * y for x, y in zip(hs, ht))
            cosines.append(1 - dot / math.sqrt(sum(x * x for x in hs) * sum(y * y for y in ht)))
    cos = sum(cosines) / len(cosines)
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["cos"].item() == pytest.approx(cos, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(5.0 * kd + 2.0 * ce + 1.0 * cos, rel=1e-5)

    terms["loss"].backward()
    probs_t = torch.softmax(teacher.logits / t, -1)
    expected = 5.0 * t * (torch.softmax(student.logits.detach() / t, -1) - probs_t) / 3 \
        + 2.0 * (torch.softmax(student.logits.detach(), -1) - torch.nn.functional.one_hot(labels, 3)) / 3
    torch.testing.assert_close(student.logits.grad, expected, rtol=1e-4, atol=1e-8)
    h, u = student.hidden_states[1][0, 0].detach(), teacher.hidden_states[1][0, 0]
    # d/dh (1 - cos(h, u)) / N = -(u/(|h||u|) - cos * h/|h|^2) / N
    cosine = (h @ u) / (h.norm() * u.norm())
    expected_h = -(u / (h.norm() * u.norm()) - cosine * h / h.norm() ** 2) / len(cosines)
    torch.testing.assert_close(student.hidden_states[1].grad[0, 0], expected_h, rtol=1e-4, atol=1e-9)
    assert student.hidden_states[1].grad[2, 1:].abs().sum() == 0  # padding does not count


def test_regression_soft_term_is_the_mse_between_outputs():
    model = tiny_bert(1, 6, 2, num_labels=1)
    loss = DistilBERTLoss(context_for(model, model, [(1, 1)], task="stsb"), alpha_ce=1.0, alpha_task=0.0, alpha_cos=0.0)
    student, teacher = outputs(3, classes=1), outputs(4, classes=1)
    terms = loss(student, teacher, {"labels": torch.tensor([1.0, 2.0, 3.0]), "attention_mask": torch.ones(3, 5)})
    assert terms["kd"].item() == pytest.approx(((student.logits - teacher.logits) ** 2).mean().item(), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(terms["kd"].item(), rel=1e-6)


def test_defaults_are_the_task_level_scripts_and_the_preset_repeats_them():
    """run_squad_w_distillation.py: T 2, alpha_ce 0.5, alpha_squad 0.5; the cosine weight is the
    pre-training command's 1 (the task-level script has none)."""
    model = tiny_bert(1, 6, 2, num_labels=3)
    loss = DistilBERTLoss(context_for(model, model, [(1, 1)]))
    assert (loss.temperature, loss.alpha_ce, loss.alpha_task, loss.alpha_cos) == (2.0, 0.5, 0.5, 1.0)
    preset = OmegaConf.load(CONF_DIR / "loss" / "distilbert.yaml")
    assert {key: preset[key] for key in ("temperature", "alpha_ce", "alpha_task", "alpha_cos")} == {
        "temperature": 2.0, "alpha_ce": 0.5, "alpha_task": 0.5, "alpha_cos": 1.0}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"alpha_ce": -1.0}, "loss.alpha_ce=-1.0 must be >= 0"),
        ({"alpha_task": -0.5}, "loss.alpha_task=-0.5 must be >= 0"),
        ({"alpha_cos": -2.0}, "loss.alpha_cos=-2.0 must be >= 0"),
        ({"temperature": 0.0}, "loss.temperature=0.0 must be > 0"),
    ],
)
def test_bad_settings_name_the_key(settings, message):
    model = tiny_bert(1, 6, 2)
    with pytest.raises(ValueError, match=message):
        DistilBERTLoss(context_for(model, model, [(1, 1)]), **settings)


def test_unequal_widths_and_causal_tasks_are_refused():
    with pytest.raises(ValueError, match="the student's is 6, the teacher's 8"):
        DistilBERTLoss(context_for(tiny_bert(1, 6, 2), tiny_bert(2, 8, 2), [(1, 2)]))
    model = tiny_bert(1, 6, 2)
    with pytest.raises(ValueError, match="loss=distilbert distils BERT-style sequence classifiers.*task 'dolly'"):
        DistilBERTLoss(context_for(model, model, [(1, 1)], task="dolly"))
