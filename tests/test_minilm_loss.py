"""`loss=minilm`: v1's attention and value-relation KLs and v2's Q-Q, K-K, V-V relation KLs against
float64 computations written here from the papers' equations, the hooks against eager attention,
and the settings it refuses."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_encoders import context_for, forward_both, padded_batch, tiny_bert
from transformers import BertConfig

from kdsuite.losses.attention import ProjectionCapture, attention_log_probs, row_kl
from kdsuite.losses.minilm import MiniLMLoss, attention_transfer_terms, default_teacher_layer, relation_terms

LENGTHS = [6, 4, 1]  # unequal lengths, one example of a single token


def softmax_rows(scores, valid):
    """softmax over the valid keys of one (L, L) map; float64, written out."""
    rows = []
    for row in scores:
        exps = [math.exp(row[j]) if valid[j] else 0.0 for j in range(len(row))]
        total = sum(exps)
        rows.append([e / total for e in exps])
    return rows


def reference_kl(teacher_maps, student_maps, lengths):
    """1/(A |x|) sum_a sum_t KL(T_{a,t} || S_{a,t}) per example, mean over examples; maps are
    per example lists of per-head (L, L) float64 score matrices (before the softmax)."""
    per_example = []
    for b, n in enumerate(lengths):
        valid = [j < n for j in range(len(teacher_maps[b][0]))]
        total, heads = 0.0, len(teacher_maps[b])
        for a in range(heads):
            p = softmax_rows(teacher_maps[b][a].tolist(), valid)
            q = softmax_rows(student_maps[b][a].tolist(), valid)
            for t in range(n):
                total += sum(p[t][j] * math.log(p[t][j] / q[t][j]) for j in range(n))
        per_example.append(total / (heads * n))
    return sum(per_example) / len(per_example)


def head_maps(left, right, heads):
    """Per example, per head: X_a Y_a^T / sqrt(d_a), float64."""
    batch, length, width = left.shape
    size = width // heads
    return [[left[b, :, a * size:(a + 1) * size].double() @ right[b, :, a * size:(a + 1) * size].double().T
             / math.sqrt(size) for a in range(heads)] for b in range(batch)]


def leaves(batch, length, width, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, width, generator=generator, dtype=torch.float64, requires_grad=True)
            for _ in range(3)]


def mask_of(lengths):
    return torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])


def test_v1_terms_and_gradients_match_the_paper():
    mask = mask_of(LENGTHS)
    student = leaves(3, 6, 8, seed=1)  # width 8, 2 heads of 4
    teacher = leaves(3, 6, 12, seed=2)  # width 12, 2 heads of 6: widths may differ in v1
    terms = attention_transfer_terms(student, teacher, 2, 2, mask)
    (sq, sk, sv), (tq, tk, tv) = student, teacher
    attn = reference_kl(head_maps(tq, tk, 2), head_maps(sq, sk, 2), LENGTHS)
    value = reference_kl(head_maps(tv, tv, 2), head_maps(sv, sv, 2), LENGTHS)
    assert terms["attn_kl"].item() == pytest.approx(attn, rel=1e-5)
    assert terms["vr_kl"].item() == pytest.approx(value, rel=1e-5)

    # gradients against float64 autograd of the same equation written with torch ops
    (terms["attn_kl"] + terms["vr_kl"]).backward()
    got = [x.grad.clone() for x in student]
    for x in student:
        x.grad = None
    reference_total(student, teacher, 2, 2, mask, relations=False).backward()
    for mine, expected in zip(got, (x.grad for x in student)):
        torch.testing.assert_close(mine.double(), expected, rtol=1e-4, atol=1e-7)
    assert all(x.grad.abs().sum() > 0 for x in student)


def reference_total(student, teacher, student_heads, teacher_heads, mask, relations: bool):
    """The v1 (relations=False) or v2 total in float64 torch ops, from the equations, for gradients."""
    valid = mask.bool()
    lengths = valid.sum(1)

    def log_probs(left, right, heads):
        b, n, d = left.shape
        lh = left.view(b, n, heads, d // heads).transpose(1, 2)
        rh = right.view(b, n, heads, d // heads).transpose(1, 2)
        scores = lh @ rh.transpose(-1, -2) / math.sqrt(d // heads)
        scores = scores.masked_fill(~valid[:, None, None, :], -1e30)
        return torch.log_softmax(scores, dim=-1)

    def kl(t, s):
        pointwise = (t.exp() * (t - s)).masked_fill(~valid[:, None, None, :], 0.0).sum(-1)  # (B, A, L)
        per_query = pointwise.mean(1) * valid  # (B, L)
        return (per_query.sum(1) / lengths).mean()

    (sq, sk, sv), (tq, tk, tv) = student, teacher
    if not relations:
        return kl(log_probs(tq, tk, teacher_heads), log_probs(sq, sk, student_heads)) + \
            kl(log_probs(tv, tv, teacher_heads), log_probs(sv, sv, student_heads))
    return sum(kl(log_probs(t, t, teacher_heads), log_probs(s, s, student_heads)) for s, t in zip(student, teacher))


def test_v2_relations_and_gradients_match_the_paper_with_unequal_widths():
    mask = mask_of(LENGTHS)
    student = leaves(3, 6, 8, seed=3)  # 4 relation heads of 2 dims
    teacher = leaves(3, 6, 12, seed=4)  # 4 relation heads of 3 dims
    terms = relation_terms(student, teacher, 4, mask)
    for name, s, t in zip(("qq", "kk", "vv"), student, teacher):
        expected = reference_kl(head_maps(t, t, 4), head_maps(s, s, 4), LENGTHS)
        assert terms[f"{name}_kl"].item() == pytest.approx(expected, rel=1e-5), name
    sum(terms.values()).backward()
    got = [x.grad.clone() for x in student]
    for x in student:
        x.grad = None
    reference_total(student, teacher, 4, 4, mask, relations=True).backward()
    for mine, expected in zip(got, (x.grad for x in student)):
        torch.testing.assert_close(mine.double(), expected, rtol=1e-4, atol=1e-7)


def test_kl_is_zero_for_equal_maps_and_ignores_padding():
    mask = mask_of(LENGTHS)
    q, k, _ = leaves(3, 6, 8, seed=5)
    log_probs = attention_log_probs(q, k, 2, mask)
    assert row_kl(log_probs, log_probs, mask).item() == pytest.approx(0.0, abs=1e-7)
    # what sits at padding positions changes nothing
    q2, k2 = q.detach().clone(), k.detach().clone()
    q2[1, 4:], k2[2, 1:] = 100.0, -7.0
    other = attention_log_probs(q2, k2, 2, mask)
    teacher = attention_log_probs(*leaves(3, 6, 8, seed=6)[:2], 2, mask)
    assert row_kl(teacher, other, mask).item() == pytest.approx(row_kl(teacher, log_probs, mask).item(), rel=1e-6)


def test_hooks_recompute_the_attention_that_eager_attention_returns():
    """The distributions from captured projections equal the eager model's `attentions`
    (an independent path through transformers), at every non-padding key."""
    model = tiny_bert(2, 8, 2)
    eager = tiny_bert(2, 8, 2, attention="eager")
    eager.load_state_dict(model.state_dict())
    batch = padded_batch(LENGTHS)
    capture = ProjectionCapture(model, [2])
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    mine = attention_log_probs(capture.get(2, "query"), capture.get(2, "key"), 2, batch["attention_mask"]).exp()
    theirs = eager(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   output_attentions=True).attentions[1]
    valid = batch["attention_mask"].bool()[:, None, None, :].expand_as(mine)
    torch.testing.assert_close(mine[valid], theirs[valid], rtol=1e-5, atol=1e-6)
    capture.remove()
    assert capture.outputs == {} and not model.bert.encoder.layer[1].attention.self.query._forward_hooks


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_loss_on_models_reads_the_last_blocks_and_clears_what_it_captured(version):
    student, teacher = tiny_bert(2, 8, 2, seed=1), tiny_bert(4, 8, 2, seed=2)
    loss = MiniLMLoss(context_for(student, teacher, [(1, 2), (2, 4)]), version=version)
    loss.bind_models(student, teacher)
    assert loss.pairs_used == [(2, 4)]
    batch = padded_batch(LENGTHS)
    student_out, _, terms = forward_both(loss, student, teacher, batch)
    expected_names = {"attn_kl", "vr_kl"} if version == "v1" else {"qq_kl", "kk_kl", "vv_kl"}
    assert set(terms) == expected_names | {"ce", "loss"}
    total = sum(terms[name] for name in expected_names) + terms["ce"]
    assert terms["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    assert all(capture.outputs == {} for capture in loss._captures)  # nothing outlives the call
    terms["loss"].backward()
    query = student.bert.encoder.layer[1].attention.self.query.weight
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_v1_refuses_unequal_heads_and_v2_takes_them():
    student, teacher = tiny_bert(2, 8, 4), tiny_bert(4, 12, 2)
    with pytest.raises(ValueError, match="loss.version=v1 compares attention distributions head by head: "
                                         "the student has 4 heads, the teacher 2"):
        MiniLMLoss(context_for(student, teacher, [(1, 2), (2, 4)]), version="v1")
    loss = MiniLMLoss(context_for(student, teacher, [(1, 2), (2, 4)]), version="v2", relation_heads=4)
    loss.bind_models(student, teacher)
    _, _, terms = forward_both(loss, student, teacher, padded_batch(LENGTHS))
    assert torch.isfinite(terms["loss"])


def test_teacher_layer_out_of_range_is_refused_in_the_constructor_and_when_bound():
    student, teacher = tiny_bert(2, 8, 2), tiny_bert(4, 8, 2)
    message = r"loss.teacher_layer=5 is out of range: the teacher has blocks 1..4"
    with pytest.raises(ValueError, match=message):
        MiniLMLoss(context_for(student, teacher, [(2, 4)]), teacher_layer=5)
    loss = MiniLMLoss(context_for(student, teacher, [(2, 4)], with_architectures=False), teacher_layer=5)
    with pytest.raises(ValueError, match=message):
        loss.bind_models(student, teacher)
    loss = MiniLMLoss(context_for(student, teacher, [(2, 4)]), teacher_layer=3)
    assert loss.pairs_used == [(2, 3)]


def test_defaults_follow_the_papers():
    assert default_teacher_layer("v2", 12) == 12 and default_teacher_layer("v2", 24) == 21
    assert default_teacher_layer("v1", 24) == 24
    base = BertConfig(hidden_size=768, num_attention_heads=12, num_hidden_layers=12)
    student = BertConfig(hidden_size=384, num_attention_heads=12, num_hidden_layers=6)
    from kdsuite.losses.base import LossContext
    from kdsuite.tracks import get_task
    context = LossContext(get_task("rte"), [(6, 12)], 384, 768, student_architecture=student, teacher_architecture=base)
    loss = MiniLMLoss(context)
    assert (loss.version, loss.relation_heads, loss.teacher_layer, loss.student_layer) == ("v2", 48, 12, 6)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"version": "v3"}, r"loss.version='v3' is not one of \['v1', 'v2'\]"),
        ({"relation_heads": 3}, "loss.relation_heads=3 must be >= 1 and divide the student's width 8"),
        ({"distill_weight": -1.0}, "loss.distill_weight=-1.0 must be >= 0"),
        ({"ce_weight": -0.1}, "loss.ce_weight=-0.1 must be >= 0"),
    ],
)
def test_bad_settings_name_the_key(settings, message):
    student, teacher = tiny_bert(2, 8, 2), tiny_bert(4, 12, 2)
    with pytest.raises(ValueError, match=message):
        MiniLMLoss(context_for(student, teacher, [(2, 4)]), **settings)


def test_causal_lm_task_is_refused():
    student, teacher = tiny_bert(2, 8, 2), tiny_bert(4, 8, 2)
    with pytest.raises(ValueError, match="loss=minilm distils BERT-style sequence classifiers.*"
                                         "task 'dolly' trains causal LMs"):
        MiniLMLoss(context_for(student, teacher, [(2, 4)], task="dolly"))
