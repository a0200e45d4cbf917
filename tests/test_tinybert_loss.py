"""`loss=tinybert`: each term against a float64 computation written here from the paper's
equations (with the official code's zeroed padding scores), gradients, the two-stage schedule
and how it is counted and saved, and the settings it refuses."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from tiny_encoders import context_for, forward_both, padded_batch, tiny_bert

from kdsuite.losses.tinybert import TinyBERTLoss, attention_term, hidden_term, masked_scores, prediction_term

LENGTHS = [7, 4, 2]


def reference_scores(query, key, heads, lengths):
    """A_i = Q_i K_i^T / sqrt(d_k) per example and head, 0 at padding keys: float64 (B, h, L, L) by loops."""
    batch, length, width = query.shape
    size = width // heads
    out = torch.zeros(batch, heads, length, length, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                for j in range(lengths[b]):
                    q = query[b, i, h * size:(h + 1) * size].double()
                    k = key[b, j, h * size:(h + 1) * size].double()
                    out[b, h, i, j] = (q * k).sum() / math.sqrt(size)
    return out


def test_attention_scores_and_their_mse_match_the_paper_and_official_masking():
    generator = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in LENGTHS])
    sq, sk = (torch.randn(3, 7, 8, generator=generator, dtype=torch.float64, requires_grad=True) for _ in range(2))
    # wider teacher, same heads
    tq, tk = (torch.randn(3, 7, 12, generator=generator, dtype=torch.float64) for _ in range(2))
    student = masked_scores(sq, sk, 2, mask)
    teacher = masked_scores(tq, tk, 2, mask)
    torch.testing.assert_close(student.double(), reference_scores(sq.detach(), sk.detach(), 2, LENGTHS),
                               rtol=1e-5, atol=1e-6)
    value = attention_term([student], [teacher])
    expected = ((reference_scores(sq.detach(), sk.detach(), 2, LENGTHS)
                 - reference_scores(tq, tk, 2, LENGTHS)) ** 2).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # the mean runs over every B x h x L x L entry, padding queries included (official)
    assert student[2, :, 5].abs().sum() > 0 and student[2, :, :, 2:].abs().sum() == 0

    value.backward()
    got = sq.grad.clone()
    sq.grad = None
    valid = mask.bool()[:, None, None, :]
    size = 4
    s = (sq.view(3, 7, 2, size).transpose(1, 2) @ sk.view(3, 7, 2, size).transpose(1, 2).transpose(-1, -2)) / 2.0
    t = (tq.view(3, 7, 2, 6).transpose(1, 2) @ tk.view(3, 7, 2, 6).transpose(1, 2).transpose(-1, -2)) / math.sqrt(6)
    ((s * valid - t * valid) ** 2).mean().backward()
    torch.testing.assert_close(got.double(), sq.grad, rtol=1e-4, atol=1e-8)


def test_hidden_and_prediction_terms_match_the_paper():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(3, 7, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 7, 12, generator=generator, dtype=torch.float64)
    projection = torch.nn.Linear(8, 12)  # the loss's W_h is fp32, its inputs are upcast to fp32
    value = hidden_term([student], [teacher], projection)
    weight, bias = projection.weight.detach().double(), projection.bias.detach().double()
    reference = ((student @ weight.T + bias - teacher) ** 2).mean()
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    value.backward()
    got = student.grad.clone()
    student.grad = None
    reference.backward()
    torch.testing.assert_close(got, student.grad, rtol=1e-4, atol=1e-8)

    z_student = torch.randn(3, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    z_teacher = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    t = 2.0
    pred = prediction_term(z_student, z_teacher, None, t, is_regression=False)
    expected = 0.0
    for b in range(3):
        p = [math.exp(v / t) for v in z_teacher[b].tolist()]
        q = [math.exp(v / t) for v in z_student[b].tolist()]
        expected -= sum(pi / sum(p) * math.log(qi / sum(q)) for pi, qi in zip(p, q)) / 3
    assert pred.item() == pytest.approx(expected, rel=1e-6)
    pred.backward()
    # d/dz_S of -sum p_T log softmax(z_S / t) = (softmax(z_S / t) - p_T) / t, over the batch mean
    expected_grad = (torch.softmax(z_student.detach() / t, -1) - torch.softmax(z_teacher / t, -1)) / t / 3
    torch.testing.assert_close(z_student.grad, expected_grad, rtol=1e-5, atol=1e-8)

    labels = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
    regression = prediction_term(z_student[:, :1], z_teacher[:, :1], labels, t, is_regression=True)
    assert regression.item() == pytest.approx(((z_student[:, 0].detach() - labels) ** 2).mean().item(), rel=1e-6)


def models():
    return tiny_bert(2, 8, 2, seed=1), tiny_bert(4, 12, 2, seed=2)


def test_loss_on_models_sums_the_mapped_pairs_and_the_embeddings():
    student, teacher = models()
    loss = TinyBERTLoss(context_for(student, teacher, [(1, 2), (2, 4)]), stage="intermediate")
    loss.bind_models(student, teacher)
    batch = padded_batch(LENGTHS)
    student_out, teacher_out, terms = forward_both(loss, student, teacher, batch)
    assert set(terms) == {"attn", "hidn", "embd", "pred", "stage", "loss"}
    assert loss.pairs_used == [(0, 0), (1, 2), (2, 4)]
    assert all(capture.outputs == {} for capture in loss._captures)  # nothing outlives the call

    # the scores from each block's own query/key Linear on its input (hidden_states[l - 1])
    def scores(model, out, layer):
        attention = model.bert.encoder.layer[layer - 1].attention.self
        hidden = out.hidden_states[layer - 1].detach()
        return reference_scores(attention.query(hidden).detach(), attention.key(hidden).detach(), 2, LENGTHS)

    with torch.no_grad():
        attn = sum(((scores(student, student_out, s) - scores(teacher, teacher_out, t)) ** 2).mean()
                   for s, t in [(1, 2), (2, 4)])
        hidn = sum(((loss.hidden_projection(student_out.hidden_states[s]).double()
                     - teacher_out.hidden_states[t].double()) ** 2).mean() for s, t in [(1, 2), (2, 4)])
        embd = ((loss.embedding_projection(student_out.hidden_states[0]).double()
                 - teacher_out.hidden_states[0].double()) ** 2).mean()
    assert terms["attn"].item() == pytest.approx(attn.item(), rel=1e-4)
    assert terms["hidn"].item() == pytest.approx(hidn.item(), rel=1e-5)
    assert terms["embd"].item() == pytest.approx(embd.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx((attn + hidn + embd).item(), rel=1e-4)
    assert terms["stage"].item() == 0.0

    terms["loss"].backward()
    assert loss.hidden_projection.weight.grad.abs().sum() > 0
    assert loss.embedding_projection.weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[1].attention.self.key.weight.grad.abs().sum() > 0
    # the classifier is not read in the intermediate stage: a zero gradient (for DDP), not none
    assert student.classifier.weight.grad is not None and student.classifier.weight.grad.abs().sum() == 0


def test_equal_widths_start_with_identity_projections():
    student, teacher = tiny_bert(2, 8, 2), tiny_bert(4, 8, 2)
    loss = TinyBERTLoss(context_for(student, teacher, [(1, 2), (2, 4)]))
    torch.testing.assert_close(loss.hidden_projection.weight, torch.eye(8))
    assert loss.embedding_projection.bias.abs().sum() == 0


def test_both_stages_run_one_after_the_other_counted_in_training_calls():
    student, teacher = models()
    loss = TinyBERTLoss(context_for(student, teacher, [(1, 2), (2, 4)]), stage="both", intermediate_batches=2)
    student.add_module("distillation_loss", loss)  # as attach_loss does: the loss saves with the student
    loss.bind_models(student, teacher)
    batch = padded_batch(LENGTHS)
    stages = []
    for step in range(4):
        student.train()
        student.zero_grad()
        _, _, terms = forward_both(loss, student, teacher, batch)
        stages.append(terms["stage"].item())
        terms["loss"].backward()
        if step == 1:  # last intermediate step: the total is the intermediate one
            assert terms["loss"].item() == pytest.approx((terms["attn"] + terms["hidn"] + terms["embd"]).item(),
                                                         rel=1e-5)
        if step == 3:  # prediction stage: the total is pred, W_h gets a zero gradient
            assert terms["loss"].item() == pytest.approx(terms["pred"].item(), rel=1e-6)
            assert loss.hidden_projection.weight.grad.abs().sum() == 0
            assert student.classifier.weight.grad.abs().sum() > 0
        student.eval()
        forward_both(loss, student, teacher, batch)  # an evaluation call does not count
    assert stages == [0.0, 0.0, 1.0, 1.0]
    assert int(student.state_dict()["distillation_loss.calls"]) == 4  # saved in checkpoints

    resumed = TinyBERTLoss(context_for(student, teacher, [(1, 2), (2, 4)]), stage="both", intermediate_batches=2)
    resumed.load_state_dict(loss.state_dict())
    assert resumed.current_stage() == "prediction"


def test_mismatched_heads_are_refused_before_any_work_and_when_bound():
    student, teacher = tiny_bert(2, 8, 4), tiny_bert(4, 8, 2)
    message = r"loss=tinybert compares attention scores head by head: the student has 4 heads, the teacher 2"
    with pytest.raises(ValueError, match=message):
        TinyBERTLoss(context_for(student, teacher, [(1, 2), (2, 4)]))
    loss = TinyBERTLoss(context_for(student, teacher, [(1, 2), (2, 4)], with_architectures=False))
    with pytest.raises(ValueError, match=message):
        loss.bind_models(student, teacher)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"stage": "final"}, r"loss.stage='final' is not one of \['intermediate', 'prediction', 'both'\]"),
        ({"attn_weight": -1.0}, "loss.attn_weight=-1.0 must be >= 0"),
        ({"embd_weight": -2.0}, "loss.embd_weight=-2.0 must be >= 0"),
        ({"intermediate_batches": -1}, "loss.intermediate_batches=-1 must be >= 0, or null"),
        ({"temperature": 0.0}, "loss.temperature=0.0 must be > 0"),
    ],
)
def test_bad_settings_name_the_key(settings, message):
    student, teacher = models()
    with pytest.raises(ValueError, match=message):
        TinyBERTLoss(context_for(student, teacher, [(2, 4)]), **settings)


def test_causal_lm_task_is_refused():
    student, teacher = models()
    with pytest.raises(ValueError, match="loss=tinybert distils BERT-style sequence classifiers.*task 'dolly'"):
        TinyBERTLoss(context_for(student, teacher, [(2, 4)], task="dolly"))


def test_the_split_is_the_official_share_of_the_run_and_one_it_never_reaches_is_refused():
    student, teacher = models()
    context = dataclasses.replace(context_for(student, teacher, [(2, 4)]), training_batches=189)
    assert TinyBERTLoss(context).intermediate_batches == 145  # round(10/13 * 189): 10 epochs of 13
    assert TinyBERTLoss(context, intermediate_batches=188).intermediate_batches == 188
    with pytest.raises(ValueError, match=r"loss.intermediate_batches=1000 with loss.stage=both, but this run makes "
                                         r"only 189 training batches per process.*null: the official 10/13 of the "
                                         r"run, 145\), or loss.stage=intermediate"):
        TinyBERTLoss(context, intermediate_batches=1000)
    # one stage for the whole run: the split is not used, and not checked
    assert TinyBERTLoss(context, stage="intermediate", intermediate_batches=1000).current_stage() == "intermediate"
    # without the run's length (a loss built outside a run) a null split cannot be placed: it says so when used
    with pytest.raises(RuntimeError, match="needs the run's length"):
        TinyBERTLoss(context_for(student, teacher, [(2, 4)])).current_stage()
