"""Causal-LM loss math: KD divergences against hand computations, response-token masking, the
logit lens (zero when distributions match, no double norm on the top layer), and chunked
computations equal to unchunked ones, values and gradients."""

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from kdsuite.losses.base import LossContext
from kdsuite.losses.fdd import FDDLoss
from kdsuite.losses.kd import KDLoss, causal_kd_terms
from kdsuite.losses.logit_lens import LogitLens, logit_lens_terms
from kdsuite.losses.tokens import causal_kd, response_positions, response_token_ce, token_divergence
from kdsuite.tracks import get_task

P = [0.7, 0.2, 0.1]  # teacher
Q = [0.5, 0.3, 0.2]  # student


def log(values):
    return torch.tensor([values]).log()


def test_forward_reverse_and_skew_kl_match_hand_computation():
    forward = sum(p * math.log(p / q) for p, q in zip(P, Q))
    reverse = sum(q * math.log(q / p) for p, q in zip(P, Q))
    skew = sum(p * math.log(p / (0.1 * p + 0.9 * q)) for p, q in zip(P, Q))
    assert token_divergence(log(P), log(Q), "forward_kl").item() == pytest.approx(forward, rel=1e-5)
    assert token_divergence(log(P), log(Q), "reverse_kl").item() == pytest.approx(reverse, rel=1e-5)
    assert token_divergence(log(P), log(Q), "skew_kl", 0.1).item() == pytest.approx(skew, rel=1e-5)
    assert forward != pytest.approx(reverse)  # the directions differ on this pair
    for divergence in ("forward_kl", "reverse_kl", "skew_kl"):
        assert token_divergence(log(P), log(P), divergence).item() == pytest.approx(0.0, abs=1e-7)


def batch_with_prompt(vocab=7, length=6, seed=0):
    """Two sequences; labels -100 on the prompt (first 3 / first 2 tokens) and on padding."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, length), generator=generator)
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, :2] = -100
    labels[1, 5:] = -100  # padding
    return ids, labels


def test_response_positions_predict_response_tokens_only():
    _, labels = batch_with_prompt()
    positions = response_positions(labels)
    assert positions.tolist() == [[False, False, True, True, True, False],
                                  [False, True, True, True, False, False]]


def test_only_response_tokens_count_in_ce_and_kd():
    _, labels = batch_with_prompt()
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 6, 7, generator=generator), torch.randn(2, 6, 7, generator=generator)
    ce = response_token_ce(student, labels)
    kd = causal_kd(student, teacher, labels, "forward_kl", 1.0, 0.1, 4)
    changed_student, changed_teacher = student.clone(), teacher.clone()
    outside = ~response_positions(labels)
    changed_student[outside] = 100 * torch.randn(int(outside.sum()), 7)
    changed_teacher[outside] = 100 * torch.randn(int(outside.sum()), 7)
    assert response_token_ce(changed_student, labels).item() == pytest.approx(ce.item())
    assert (causal_kd(changed_student, changed_teacher, labels, "forward_kl", 1.0, 0.1, 4).item()
            == pytest.approx(kd.item()))

    # hand computation: the mean over the 6 response tokens of CE and of KL(p_T || p_S)
    positions = response_positions(labels)
    targets = labels[:, 1:][labels[:, 1:] != -100]
    log_s, log_t = student[positions].log_softmax(-1), teacher[positions].log_softmax(-1)
    assert ce.item() == pytest.approx(-log_s[range(6), targets].mean().item(), rel=1e-5)
    assert kd.item() == pytest.approx((log_t.exp() * (log_t - log_s)).sum(-1).mean().item(), rel=1e-5)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "skew_kl"])
def test_chunked_kd_equals_unchunked_in_value_and_gradient(divergence):
    _, labels = batch_with_prompt()
    generator = torch.Generator().manual_seed(2)
    teacher = torch.randn(2, 6, 7, generator=generator)
    values, grads = [], []
    for chunk_size in (1, 4, 1000):
        student = torch.randn(2, 6, 7, generator=torch.Generator().manual_seed(3)).requires_grad_()
        value = causal_kd(student, teacher, labels, divergence, 2.0, 0.1, chunk_size)
        value.backward()
        values.append(value.item())
        grads.append(student.grad)
    assert values[0] == pytest.approx(values[2], rel=1e-6) and values[1] == pytest.approx(values[2], rel=1e-6)
    torch.testing.assert_close(grads[0], grads[2])
    torch.testing.assert_close(grads[1], grads[2])


def tiny_lm(model_type="gpt2", layers=4, seed=0):
    torch.manual_seed(seed)
    if model_type == "gpt2":
        config = AutoConfig.for_model("gpt2", n_layer=layers, n_embd=16, n_head=2, vocab_size=11,
                                      n_positions=32, bos_token_id=None, eos_token_id=None)
    else:
        config = AutoConfig.for_model("llama", num_hidden_layers=layers, hidden_size=16, intermediate_size=32,
                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=11,
                                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_logit_lens_decodes_the_top_layer_without_a_second_norm(model_type):
    model = tiny_lm(model_type)
    ids, _ = batch_with_prompt(vocab=11)
    out = model(input_ids=ids, output_hidden_states=True)
    lens = LogitLens(model)
    top = lens.log_probs(out.hidden_states[4].reshape(-1, 16), 4)
    torch.testing.assert_close(top, out.logits.reshape(-1, 11).log_softmax(-1))
    lower = lens.log_probs(out.hidden_states[2].reshape(-1, 16), 2)
    expected = model.lm_head(lens.norm(out.hidden_states[2])).reshape(-1, 11).log_softmax(-1)
    torch.testing.assert_close(lower, expected)


def test_logit_lens_terms_are_zero_when_distributions_match_at_every_pair():
    model = tiny_lm()
    ids, labels = batch_with_prompt(vocab=11)
    out = model(input_ids=ids, output_hidden_states=True)
    lens = LogitLens(model)
    traj, delta = logit_lens_terms(lens, lens, [(1, 1), (2, 2), (4, 4)], out.hidden_states, out.hidden_states,
                                   labels, 4)
    assert traj.item() == pytest.approx(0.0, abs=1e-6)
    assert delta.item() == pytest.approx(0.0, abs=1e-5)


def test_logit_lens_terms_match_a_direct_computation_and_grow_when_layers_differ():
    teacher, student = tiny_lm("gpt2", 4, seed=0), tiny_lm("llama", 2, seed=1)
    ids, labels = batch_with_prompt(vocab=11)
    teacher_out = teacher(input_ids=ids, output_hidden_states=True)
    student_out = student(input_ids=ids, output_hidden_states=True)
    pairs = [(1, 2), (2, 4)]
    traj, delta = logit_lens_terms(LogitLens(student), LogitLens(teacher), pairs, student_out.hidden_states,
                                   teacher_out.hidden_states, labels, 3)
    positions = response_positions(labels)
    t1 = teacher.lm_head(teacher.transformer.ln_f(teacher_out.hidden_states[2]))[positions].log_softmax(-1)
    t2 = teacher_out.logits[positions].log_softmax(-1)
    s1 = student.lm_head(student.model.norm(student_out.hidden_states[1]))[positions].log_softmax(-1)
    s2 = student_out.logits[positions].log_softmax(-1)
    kl = lambda p, q: (p.exp() * (p - q)).sum(-1)  # noqa: E731
    expected_traj = (kl(t1, s1).mean() + kl(t2, s2).mean()) / 2
    expected_delta = (1 - torch.cosine_similarity(t2 - t1, s2 - s1, dim=-1)).mean()
    assert traj.item() == pytest.approx(expected_traj.item(), rel=1e-5)
    assert delta.item() == pytest.approx(expected_delta.item(), rel=1e-5)
    assert traj.item() > 0.01 and delta.item() > 0.01


def test_chunked_logit_lens_equals_unchunked_in_value_and_gradient():
    """In float64, so that only the chunking (not summation order) could make a difference."""
    teacher = tiny_lm("gpt2", 4, seed=0).double()
    ids, labels = batch_with_prompt(vocab=11)
    teacher_out = teacher(input_ids=ids, output_hidden_states=True)
    results = []
    for chunk_size in (1, 2, 1000):
        student = tiny_lm("llama", 2, seed=1).double().train()
        student_out = student(input_ids=ids, output_hidden_states=True)
        traj, delta = logit_lens_terms(LogitLens(student), LogitLens(teacher), [(1, 2), (2, 4)],
                                       student_out.hidden_states, teacher_out.hidden_states, labels, chunk_size)
        (traj + delta).backward()
        results.append((traj.item(), delta.item(), student.lm_head.weight.grad.clone(),
                        student.model.layers[0].mlp.up_proj.weight.grad.clone()))
    for traj, delta, head_grad, block_grad in results[:2]:
        assert traj == pytest.approx(results[2][0], rel=1e-6) and delta == pytest.approx(results[2][1], rel=1e-6)
        torch.testing.assert_close(head_grad, results[2][2])
        torch.testing.assert_close(block_grad, results[2][3])


def causal_context(pairs):
    return LossContext(get_task("dolly"), pairs, 16, 16, torch.empty(0))


def test_fdd_logit_lens_loss_sums_kd_and_weighted_terms():
    teacher, student = tiny_lm("gpt2", 4, seed=0), tiny_lm("llama", 2, seed=1)
    loss = FDDLoss(causal_context([(1, 2), (2, 4)]), alpha_traj=2.0, beta_delta=0.5, temperature=1.0, chunk_size=3)
    assert loss.space == "logit_lens"  # auto on a causal task
    loss.bind_models(student, teacher)
    ids, labels = batch_with_prompt(vocab=11)
    student_out = student(input_ids=ids, output_hidden_states=True)
    teacher_out = teacher(input_ids=ids, output_hidden_states=True)
    terms = loss(student_out, teacher_out, {"labels": labels})
    kd = causal_kd_terms(student_out.logits, teacher_out.logits, labels, 0.5, 1.0)
    assert terms["kd"].item() == pytest.approx(kd["kd"].item(), rel=1e-5)
    expected = kd["loss"] + 2.0 * terms["traj"] + 0.5 * terms["delta"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_loss_uses_the_configured_divergence_on_causal_tasks():
    _, labels = batch_with_prompt()
    student = SimpleNamespace(logits=torch.randn(2, 6, 7))
    teacher = SimpleNamespace(logits=torch.randn(2, 6, 7))
    forward = KDLoss(causal_context([]), alpha=1.0, temperature=1.0)(student, teacher, {"labels": labels})
    reverse = KDLoss(causal_context([]), alpha=1.0, temperature=1.0, divergence="reverse_kl")(
        student, teacher, {"labels": labels})
    assert forward["kd"].item() == pytest.approx(
        causal_kd(student.logits, teacher.logits, labels, "forward_kl", 1.0, 0.1, 256).item())
    assert reverse["kd"].item() == pytest.approx(
        causal_kd(student.logits, teacher.logits, labels, "reverse_kl", 1.0, 0.1, 256).item())
    assert forward["loss"].item() == pytest.approx(forward["kd"].item())  # alpha=1: KD only


@pytest.mark.parametrize(("make", "message"), [
    (lambda: KDLoss(LossContext(get_task("rte"), [], 8, 8, torch.zeros(2)), divergence="reverse_kl"),
     "defined for causal LMs"),
    (lambda: KDLoss(causal_context([]), divergence="js"), "divergence='js'"),
    (lambda: KDLoss(causal_context([]), divergence="skew_kl", skew=1.0), "skew=1.0"),
    (lambda: FDDLoss(causal_context([(1, 2), (2, 4)]), space="hidden"), "space=hidden is for sequence classifiers"),
    (lambda: FDDLoss(LossContext(get_task("rte"), [(1, 2), (2, 4)], 8, 8, torch.zeros(2)), space="logit_lens"),
     "space=logit_lens decodes"),
])
def test_causal_settings_fail_clearly(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_codir_is_refused_on_causal_tasks():
    from kdsuite.losses.codir import CoDIRLoss

    with pytest.raises(ValueError, match="codir contrasts per-example"):
        CoDIRLoss(causal_context([(1, 2)]))
