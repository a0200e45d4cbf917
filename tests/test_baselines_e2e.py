"""The four encoder baselines of issue 32 through `python run.py`: one multirun over pkd, tinybert,
minilm and distilbert on the tiny random models, checked in MLflow (tags, params, every term),
and the configs each refuses before any work."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
from conftest import REPO, TINY_RUN

from kdsuite.losses.tinybert import TinyBERTLoss
from kdsuite.run import train
from kdsuite.run.assembly import build_run

FAMILY_TERMS = {
    "pkd": {"ce", "kd", "pt"},
    "tinybert": {"attn", "hidn", "embd", "pred", "stage"},
    "minilm": {"qq_kl", "kk_kl", "vv_kl", "ce"},
    "distilbert": {"kd", "ce", "cos"},
}


@pytest.mark.e2e
@pytest.mark.slow(seconds=100)
def test_each_family_runs_through_run_py_and_logs_its_terms(tmp_path, glue_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        *TINY_RUN, "trainer.logging_steps=1",
        f"dataset.data_dir={glue_dir}", f"cache_dir={tmp_path / 'cache'}", f"tracking.uri={uri}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    command = [sys.executable, str(REPO / "run.py"), "-m", "loss=pkd,tinybert,minilm,distilbert", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("kdsuite")
    students = {run.data.tags["loss"]: run for run in client.search_runs([experiment.experiment_id])
                if run.data.tags.get("role") == "student"}
    assert set(students) == set(FAMILY_TERMS)
    for loss, terms in FAMILY_TERMS.items():
        run = students[loss]
        assert run.info.status == "FINISHED", loss
        logged = {key.removeprefix("train/") for key in run.data.metrics if key.startswith("train/")}
        assert terms | {"loss"} <= logged, (loss, logged)
        for term in terms:
            values = [point.value for point in client.get_metric_history(run.info.run_id, f"train/{term}")]
            assert len(values) == 4 and all(value == value for value in values), (loss, term, values)
    assert students["minilm"].data.params["loss.version"] == "v2"
    # tinybert's default split, the official 10/13 of the run: 3 of the 4 batches intermediate, then prediction
    stages = [p.value for p in client.get_metric_history(students["tinybert"].info.run_id, "train/stage")]
    assert stages == [0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss=minilm", "loss.version=v3"], r"loss.version='v3' is not one of \['v1', 'v2'\]"),
        (["loss=pkd", "loss.beta=-1.0"], "loss.beta=-1.0 must be >= 0"),
        (["loss=tinybert", "loss.hidn_weight=-0.5"], "loss.hidn_weight=-0.5 must be >= 0"),
        (["loss=distilbert", "loss.alpha_cos=-1.0"], "loss.alpha_cos=-1.0 must be >= 0"),
        (["loss=minilm", "loss.ce_weight=-1.0"], "loss.ce_weight=-1.0 must be >= 0"),
        (["loss=tinybert", "loss.stage=all"],
         r"loss.stage='all' is not one of \['intermediate', 'prediction', 'both'\]"),
        # TINY_RUN makes 4 training batches: a split at 4 would never reach the prediction stage
        (["loss=tinybert", "loss.intermediate_batches=4"],
         r"loss.intermediate_batches=4 with loss.stage=both, but this run makes only 4 training batches per process"),
        (["loss=minilm", "loss.relation_heads=3"],
         "loss.relation_heads=3 must be >= 1 and divide the student's width 32"),
    ],
)
def test_bad_settings_fail_in_build_run(make_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        build_run(make_config(*TINY_RUN, *overrides))


# These checks need both models' depth and heads, which `build_run` does not yet put in the
# LossContext (`student_architecture`/`teacher_architecture`): until it does, the losses make them
# when the models are bound (after the teacher's fine-tune, before the first step), which
# `test_checks_that_need_the_models_fail_when_bound` covers.
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss=tinybert", "student.init=random", "+student.config_overrides.num_attention_heads=4"],
         "the student has 4 heads, the teacher 2"),
        (["loss=minilm", "loss.teacher_layer=5"], r"loss.teacher_layer=5 is out of range: the teacher has blocks 1..4"),
        (["loss=pkd", "mapping=custom", "mapping.pairs=[[1,4]]"], "no patient pair is left for loss.beta=500.0"),
    ],
)
def test_checks_that_need_the_architectures_fail_in_build_run(make_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        build_run(make_config(*TINY_RUN, *overrides))


# TINY_RUN: 48 training examples in batches of 8, so 6 batches an epoch on one process
SPLITS = [
    ([], 4),  # trainer.max_steps=4
    (["trainer.gradient_accumulation_steps=2"], 8),  # 3 steps an epoch: 6 micro-batches, then 2
    (["trainer.gradient_accumulation_steps=4", "trainer.max_steps=3"], 10),  # an epoch's last step takes 2, not 4
    (["trainer.max_steps=-1", "trainer.num_train_epochs=2"], 12),
    (["trainer.max_steps=-1", "trainer.num_train_epochs=1", "dataset.max_train_samples=50"], 7),  # a short last
    (["trainer.max_steps=-1", "trainer.num_train_epochs=1.5", "trainer.gradient_accumulation_steps=4"], 10),
    (["trainer.max_steps=2", "trainer.per_device_train_batch_size=48"], 2),  # the fewest stage=both allows: 1 + 1
]


@pytest.mark.parametrize(("overrides", "batches"), SPLITS)
def test_tinybert_splits_the_runs_own_length_by_default(make_config, overrides, batches):
    loss = build_run(make_config(*TINY_RUN, "loss=tinybert", *overrides)).loss
    assert loss.intermediate_batches == min(round(10 / 13 * batches), batches - 1)


@pytest.mark.e2e
@pytest.mark.parametrize("overrides", [SPLITS[2][0], SPLITS[5][0]], ids=["max_steps", "fractional_epochs"])
def test_the_run_makes_the_training_batches_build_run_counted(make_config, overrides, monkeypatch):
    """The count is the Trainer's: the loss's own count of training calls at the end equals it."""
    from kdsuite.run import assembly

    counted, losses = [], []
    real_count, real_bind = assembly.training_batches, TinyBERTLoss.bind_models
    monkeypatch.setattr(assembly, "training_batches", lambda *args: counted.append(real_count(*args)) or counted[-1])
    monkeypatch.setattr(TinyBERTLoss, "bind_models", lambda self, *args: losses.append(self) or real_bind(self, *args))
    train(make_config(*TINY_RUN, "loss=tinybert", *overrides))
    assert counted == [10] and int(losses[-1].calls) == 10


def test_a_run_of_one_batch_cannot_hold_both_stages(make_config):
    with pytest.raises(ValueError, match="loss.stage=both runs two stages one after the other, but this run makes "
                                         "only 1 training batch per process"):
        build_run(make_config(*TINY_RUN, "loss=tinybert", "trainer.max_steps=1"))


def test_tinybert_refuses_cached_outputs_naming_the_loss(make_config):
    with pytest.raises(ValueError, match="teacher.outputs=cached: loss=tinybert follows the official code over"):
        build_run(make_config(*TINY_RUN, "loss=tinybert", "teacher.outputs=cached"))


def test_minilm_declares_its_teacher_blocks_projections_for_the_cache(make_config):
    """minilm reads q/k/v of its one teacher block, and no logits (its task CE reads the labels)."""
    minilm = build_run(make_config(*TINY_RUN, "loss=minilm", "teacher.outputs=cached")).loss
    reads = minilm.cached_teacher_reads()
    assert not reads.logits and reads.hidden_layers == ()
    assert reads.projections == tuple((minilm.teacher_layer, p) for p in ("query", "key", "value"))


def test_distilbert_declares_the_teachers_last_layer_for_the_cache(make_config):
    """build_run gives the loss the teacher's depth, so distilbert's cached reads are known before any work."""
    reads = build_run(make_config(*TINY_RUN, "loss=distilbert", "teacher.outputs=cached")).loss.cached_teacher_reads()
    assert reads.hidden_layers == (4,) and reads.tokens == "all"  # the tiny teacher has 4 blocks


@pytest.mark.e2e
@pytest.mark.slow(seconds=30)
def test_pkd_and_minilm_train_from_cached_teacher_outputs(make_config):
    """pkd reads the logits and the patient layers' first token, minilm its teacher block's q/k/v
    and no logits: both from the store (one teacher fine-tune, shared)."""
    cfg = make_config(*TINY_RUN, "loss=pkd", "teacher.outputs=cached")
    assert build_run(cfg).loss.cached_teacher_reads().tokens == "cls"
    train(cfg)
    train(make_config(*TINY_RUN, "loss=minilm", "teacher.outputs=cached"))
    client = mlflow.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    students = {run.data.tags["loss"]: run for run in client.search_runs([experiment.experiment_id])
                if run.data.tags["role"] == "student"}
    assert {loss: run.info.status for loss, run in students.items()} == {"pkd": "FINISHED", "minilm": "FINISHED"}
    assert {"train/ce", "train/kd", "train/pt"} <= set(students["pkd"].data.metrics)
    assert students["pkd"].data.metrics["train/pt"] > 0
    assert {"train/qq_kl", "train/kk_kl", "train/vv_kl"} <= set(students["minilm"].data.metrics)


@pytest.mark.parametrize(("preset", "target"), [("pkd_weights", "PKDLoss"), ("tinybert_weights", "TinyBERTLoss"),
                                                ("minilm_weights", "MiniLMLoss"),
                                                ("distilbert_weights", "DistilBERTLoss")])
def test_sweep_presets_select_their_loss_and_search_its_keys(make_config, preset, target):
    import yaml

    from hydra_plugins.kdsuite_optuna_sweeper.search_space import split_overrides

    cfg = make_config(f"sweep={preset}")
    assert cfg.loss._target_.endswith(target)
    params = yaml.safe_load((REPO / "conf" / "sweep" / f"{preset}.yaml").read_text())["hydra"]["sweeper"]["params"]
    fixed, space = split_overrides([], params)
    assert fixed == [] and set(space) == set(params)
    assert all(key.split(".", 1)[1] in cfg.loss for key in params)
