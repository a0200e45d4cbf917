"""CoDIR: memory banks, negative sampling, InfoNCE against a hand computation, and behaviour."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kdsuite.losses.base import LossContext
from kdsuite.losses.codir import (
    CoDIRLoss,
    NegativeSampler,
    bank_init_range,
    info_nce,
    init_memory_bank,
    update_memory_bank,
)
from kdsuite.losses.kd import KDLoss
from kdsuite.tracks import get_task


def context(labels, task="rte", pairs=((1, 2), (2, 4)), width=8):
    return LossContext(get_task(task), list(pairs), width, width, torch.tensor(labels))


def test_memory_bank_init_range():
    bank = init_memory_bank(1000, 128, torch.Generator().manual_seed(0))
    bound = 1 / math.sqrt(128 / 3)
    assert bank_init_range(128) == pytest.approx(bound)
    assert bank.abs().max().item() <= bound
    assert bank.abs().max().item() > 0.95 * bound  # the whole range is used
    assert abs(bank.mean().item()) < 0.01


def test_memory_bank_update_rule():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    embeddings = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    update_memory_bank(bank, torch.tensor([0, 2]), embeddings, momentum=0.5)
    expected_0 = F.normalize(torch.tensor([0.5, 0.5]), dim=0)
    expected_2 = F.normalize(torch.tensor([0.3 + 0.5, 0.4]), dim=0)
    assert torch.allclose(bank[0], expected_0) and torch.allclose(bank[2], expected_2)
    assert torch.equal(bank[1], torch.tensor([0.0, 1.0]))  # untouched slot


def test_label_aware_negatives_never_share_the_anchor_label():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2, 2, 0, 1])
    sampler = NegativeSampler(labels, num_negatives=100, strategy="label_aware", is_regression=False)
    anchors = torch.arange(10)
    negatives = sampler(anchors)
    assert negatives.shape == (10, 100)
    assert (labels[negatives] != labels[anchors].unsqueeze(1)).all()
    assert set(negatives[0].tolist()) == {i for i in range(10) if labels[i] != 0}  # whole pool reached


def test_random_negatives_exclude_the_anchor_and_regression_uses_random():
    torch.manual_seed(0)
    sampler = NegativeSampler(torch.tensor([0.5, 1.0, 2.5, 4.0]), 200, "label_aware", is_regression=True)
    assert not sampler.label_aware
    anchors = torch.tensor([0, 3])
    negatives = sampler(anchors)
    assert (negatives != anchors.unsqueeze(1)).all()
    assert set(negatives[0].tolist()) == {1, 2, 3}


def test_label_aware_needs_two_labels():
    with pytest.raises(ValueError, match="at least two labels.*negatives=random"):
        NegativeSampler(torch.tensor([1, 1, 1]), 5, "label_aware", is_regression=False)


def test_info_nce_matches_hand_computation():
    anchor = torch.tensor([[1.0, 0.0]])
    positive = torch.tensor([[0.6, 0.8]])
    negatives = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])
    tau = 0.5
    logits = [0.6 / tau, 0.0 / tau, -1.0 / tau]
    expected = -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert info_nce(anchor, positive, negatives, tau).item() == pytest.approx(expected, rel=1e-6)


def fake_out(hidden_layers, logits):
    return SimpleNamespace(hidden_states=tuple(hidden_layers), logits=logits)


def test_contrastive_loss_falls_when_student_and_teacher_align():
    torch.manual_seed(0)
    loss = CoDIRLoss(context([0, 1] * 50), num_negatives=20)
    teacher_z = F.normalize(torch.randn(8, 128), dim=-1)
    negatives = loss.sampler(torch.arange(8))
    aligned = loss.contrastive(teacher_z.clone(), teacher_z, torch.arange(8), negatives)
    unrelated = loss.contrastive(F.normalize(torch.randn(8, 128), dim=-1), teacher_z, torch.arange(8), negatives)
    assert aligned.item() < unrelated.item()


def test_symmetric_averages_both_directions():
    loss = CoDIRLoss(context([0, 1] * 50), num_negatives=10, symmetric=True)
    z_s, z_t = F.normalize(torch.randn(4, 128), dim=-1), F.normalize(torch.randn(4, 128), dim=-1)
    index = torch.arange(4)
    negatives = loss.sampler(index)
    symmetric = loss.contrastive(z_s, z_t, index, negatives)
    student_anchored = info_nce(z_s, z_t, loss.teacher_bank[negatives], loss.tau)
    teacher_anchored = info_nce(z_t, z_s, loss.student_bank[negatives], loss.tau)
    assert symmetric.item() == pytest.approx(0.5 * (student_anchored + teacher_anchored).item(), rel=1e-6)
    assert student_anchored.item() != pytest.approx(teacher_anchored.item())


def test_forward_logs_terms_and_updates_banks_only_in_training():
    torch.manual_seed(0)
    loss = CoDIRLoss(context([0, 1, 0, 1, 1, 0]), num_negatives=4)
    hidden = [torch.randn(3, 5, 8) for _ in range(5)]
    batch = {
        "labels": torch.tensor([0, 1, 0]),
        "attention_mask": torch.tensor([[1, 1, 1, 0, 0]] * 3),
        "example_index": torch.tensor([0, 1, 2]),
    }
    before = loss.teacher_bank.clone()
    loss.eval()
    terms = loss(fake_out(hidden, torch.randn(3, 2)), fake_out(hidden, torch.randn(3, 2)), batch)
    assert set(terms) == {"ce", "kd", "crd", "loss"}
    assert torch.equal(loss.teacher_bank, before)
    loss.train()
    loss(fake_out(hidden, torch.randn(3, 2)), fake_out(hidden, torch.randn(3, 2)), batch)
    assert not torch.equal(loss.teacher_bank[:3], before[:3])
    assert torch.equal(loss.teacher_bank[3:], before[3:])
    assert torch.allclose(loss.teacher_bank[:3].norm(dim=-1), torch.ones(3))


def test_padding_does_not_change_mean_pooled_embeddings():
    torch.manual_seed(0)
    loss = CoDIRLoss(context([0, 1, 0, 1]), num_negatives=3)
    hidden = [torch.randn(1, 4, 8) for _ in range(5)]
    mask = torch.tensor([[1, 1, 0, 0]])
    z = loss.embed(fake_out(hidden, None), [1, 2], loss.student_head, mask)
    for layer in hidden:
        layer[0, 2:] = 1000.0
    assert torch.allclose(loss.embed(fake_out(hidden, None), [1, 2], loss.student_head, mask), z)


def test_crd_nce_fixes_its_normalisers_at_the_first_batch():
    torch.manual_seed(0)
    loss = CoDIRLoss(context([0, 1] * 20), num_negatives=8, objective="crd_nce")
    z_s, z_t = F.normalize(torch.randn(4, 128), dim=-1), F.normalize(torch.randn(4, 128), dim=-1)
    first = loss.contrastive(z_s, z_t, torch.arange(4), loss.sampler(torch.arange(4)))
    norms = loss.nce_norms.clone()
    assert torch.isfinite(first) and (norms > 0).all()
    loss.contrastive(z_t, z_s, torch.arange(4, 8), loss.sampler(torch.arange(4, 8)))
    assert torch.equal(loss.nce_norms, norms)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objective": "simclr"}, "loss.objective='simclr' is not one of"),
        ({"pooling": "max"}, "loss.pooling='max' is not one of"),
        ({"alpha": 1.5}, "loss.alpha=1.5"),
        ({"tau": 0.0}, "tau > 0"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CoDIRLoss(context([0, 1]), **kwargs)


def test_alpha_weighs_ce_against_kd_as_in_kd():
    torch.manual_seed(0)
    hidden = [torch.randn(3, 5, 8) for _ in range(5)]
    student, teacher = fake_out(hidden, torch.randn(3, 2)), fake_out(hidden, torch.randn(3, 2))
    batch = {"labels": torch.tensor([0, 1, 0]), "attention_mask": torch.ones(3, 5), "example_index": torch.arange(3)}
    loss = CoDIRLoss(context([0, 1, 0, 1]), alpha=0.2, temperature=3.0, lambda_crd=0.5, num_negatives=2).eval()
    terms = loss(student, teacher, batch)
    kd = KDLoss(context([0, 1, 0, 1]), alpha=0.2, temperature=3.0)(student, teacher, batch)
    assert terms["ce"].item() == kd["ce"].item() and terms["kd"].item() == kd["kd"].item()
    assert terms["loss"].item() == pytest.approx((kd["loss"] + 0.5 * terms["crd"]).item(), rel=1e-6)


def test_the_old_weight_name_beta_is_refused(make_config):
    from hydra.errors import ConfigCompositionException
    from hydra.utils import instantiate

    with pytest.raises(ConfigCompositionException, match="loss.beta"):
        make_config("loss=codir", "loss.beta=0.3")
    cfg = make_config("loss=codir", "+loss.beta=0.3")
    with pytest.raises(TypeError, match="'beta'"):
        instantiate(cfg.loss)(context=context([0, 1]))


def test_heads_and_banks_come_from_the_run_seed():
    """Every process of a run builds the same heads and banks, whatever its RNG state."""
    torch.manual_seed(1)
    first = CoDIRLoss(LossContext(get_task("rte"), [(1, 2)], 8, 8, torch.tensor([0, 1] * 10), seed=7))
    torch.manual_seed(2)
    second = CoDIRLoss(LossContext(get_task("rte"), [(1, 2)], 8, 8, torch.tensor([0, 1] * 10), seed=7))
    other = CoDIRLoss(LossContext(get_task("rte"), [(1, 2)], 8, 8, torch.tensor([0, 1] * 10), seed=8))
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert not torch.equal(first.student_bank, other.student_bank)
    assert not torch.equal(first.student_bank, first.teacher_bank)


def test_negatives_are_drawn_from_seed_and_draw_count():
    """The draw depends on (seed, number of training draws) only, not on the global RNG."""
    loss = CoDIRLoss(context([0, 1] * 50), num_negatives=16)
    index = torch.arange(8)
    torch.manual_seed(0)
    first = loss.draw_negatives(index)
    torch.manual_seed(1)
    assert torch.equal(loss.draw_negatives(index), first)
    loss.draws += 1
    assert not torch.equal(loss.draw_negatives(index), first)


def test_training_forward_counts_draws_and_eval_does_not():
    loss = CoDIRLoss(context([0, 1, 0, 1, 1, 0]), num_negatives=4)
    hidden = [torch.randn(3, 5, 8) for _ in range(5)]
    batch = {"labels": torch.tensor([0, 1, 0]), "attention_mask": torch.ones(3, 5, dtype=torch.long),
             "example_index": torch.tensor([0, 1, 2])}
    loss.eval()
    loss(fake_out(hidden, torch.randn(3, 2)), fake_out(hidden, torch.randn(3, 2)), batch)
    assert int(loss.draws) == 0
    loss.train()
    loss(fake_out(hidden, torch.randn(3, 2)), fake_out(hidden, torch.randn(3, 2)), batch)
    assert int(loss.draws) == 1


def test_an_index_twice_in_one_update_counts_once_from_its_first_occurrence():
    bank = F.normalize(torch.randn(4, 3), dim=-1)
    expected = bank.clone()
    embeddings = F.normalize(torch.randn(3, 3), dim=-1)
    update_memory_bank(bank, torch.tensor([2, 0, 2]), embeddings, momentum=0.5)
    update_memory_bank(expected, torch.tensor([2, 0]), embeddings[:2], momentum=0.5)
    assert torch.equal(bank, expected)


def test_ddp_does_not_broadcast_the_banks(tmp_path):
    """The loss's buffers are ignored by DDP, so a divergence could not be hidden by rank 0's copy."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from kdsuite.trainer import attach_loss

    student = torch.nn.Sequential(torch.nn.Linear(8, 8))
    student.register_buffer("running", torch.zeros(2))
    loss = CoDIRLoss(context([0, 1] * 5), num_negatives=2)
    attach_loss(student, loss)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(student)
        broadcast = {id(buffer) for buffer in wrapped.modules_buffers}
    finally:
        dist.destroy_process_group()
    assert id(student.running) in broadcast  # the model's own buffers are still DDP's
    for buffer in (loss.student_bank, loss.teacher_bank, loss.draws, loss.nce_norms, loss.sampler.pools):
        assert id(buffer) not in broadcast
