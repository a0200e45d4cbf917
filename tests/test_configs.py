"""Every option of every config group composes, and its `_target_` instantiates."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from kdsuite.losses.base import DistillationLoss, LossContext
from kdsuite.tracks import get_task

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["teacher", "student", "loss", "mapping", "dataset", "trainer"]
OPTIONS = [
    (group, path.stem)
    for group in GROUPS
    for path in sorted((CONF / group).glob("*.yaml"))
    if not path.stem.startswith("_")
]
EXTRA = {"mapping": {"custom": ["mapping.pairs=[[1,3],[2,6]]"]},
         "loss": {name: ["dataset=dolly"] for name in ("uld", "gkd", "distillm")}}  # causal-only divergences


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes(make_config, group, option):
    cfg = make_config(f"{group}={option}", *EXTRA.get(group, {}).get(option, []))
    assert cfg[group] is not None
    pairs = instantiate(cfg.mapping)(6, 12)
    assert pairs and all(1 <= s <= 6 and 1 <= t <= 12 for s, t in pairs)
    context = LossContext(get_task(cfg.dataset.name), pairs, 384, 384, torch.tensor([0, 1, 0, 1]))
    loss = instantiate(cfg.loss)(context=context)
    assert isinstance(loss, DistillationLoss)
    if group == "dataset":
        subset = {"sst2_8k": "sst2"}  # a subset option keeps its task's name (and so its tables' column)
        assert cfg.dataset.name == subset.get(option, option)
        get_task(cfg.dataset.name)
        if option in subset:
            assert cfg.dataset.max_train_samples == 8000
    if group == "student":
        assert cfg.student.name == option and cfg.student.num_layers >= 2
        assert cfg.student.lora.r == 0  # LoRA is opt-in


def test_all_groups_are_covered():
    assert {group for group, _ in OPTIONS} == set(GROUPS)
    assert {"ce", "kd"} <= {option for group, option in OPTIONS if group == "loss"}
    assert {"sst2", "sst2_8k", "mrpc", "rte", "cola", "stsb", "qnli", "dolly", "sharegpt"} == {
        option for group, option in OPTIONS if group == "dataset"
    }


def test_experiment_presets_compose(make_config):
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        cfg = make_config(f"experiment={path.stem}")
        assert cfg.dataset.name


@pytest.mark.parametrize(("preset", "loss"), [("fdd_weights", "FDDLoss"), ("codir_weights", "CoDIRLoss"),
                                              ("kd_weights", "KDLoss"), ("uld_weights", "ULDLoss")])
def test_sweep_presets_compose_and_select_their_loss(make_config, preset, loss):
    from hydra_plugins.kdsuite_optuna_sweeper.search_space import split_overrides

    cfg = make_config(f"sweep={preset}")
    assert cfg.loss._target_.endswith(loss)
    import yaml

    params = yaml.safe_load((CONF / "sweep" / f"{preset}.yaml").read_text())["hydra"]["sweeper"]["params"]
    fixed, space = split_overrides([], params)
    assert fixed == [] and set(space) == set(params)
    for key in params:  # every searched key exists in the loss config
        assert key.split(".", 1)[1] in cfg.loss


def test_fdd_gpt2_preset_is_the_papers_gpt2_setting(make_config):
    cfg = make_config("experiment=fdd_gpt2")
    assert (cfg.teacher.name_or_path, cfg.student.pretrained, cfg.dataset.name) == ("gpt2-xl", "gpt2", "dolly")
    assert cfg.dataset.split_sizes == {"validation": 500, "test": 500, "train": 14000}
    assert cfg.dataset.generation.n_seeds == 5 and cfg.dataset.generation.temperature == 1.0
    assert cfg.trainer.learning_rate == 5e-4 and cfg.trainer.lr_scheduler_type == "constant"
    pairs = instantiate(cfg.mapping)(12, 48)  # GPT-2 -> GPT-2 XL, L_D = 4
    assert pairs == [(2, 9), (4, 18), (6, 27), (8, 36)]
    loss = instantiate(cfg.loss)(context=LossContext(get_task("dolly"), pairs, 768, 1600, torch.empty(0)))
    assert loss.space == "logit_lens" and loss.temperature == 1.0


@pytest.mark.parametrize("loss", ["kd", "fdd"])
def test_token_level_kd_runs_at_temperature_one_on_instruction_data_only(make_config, loss):
    assert make_config(f"loss={loss}", "dataset=dolly").loss.temperature == 1.0
    assert make_config(f"loss={loss}", "dataset=sharegpt").loss.temperature == 1.0
    assert make_config(f"loss={loss}", "dataset=rte").loss.temperature == 2.0
    assert make_config(f"loss={loss}", "dataset=dolly", "loss.temperature=3").loss.temperature == 3
    assert "temperature" not in make_config("loss=ce", "dataset=dolly").loss


@pytest.mark.parametrize(("loss", "source"), [("kd", "dataset"), ("seqkd", "teacher"), ("imitkd", "student"),
                                            ("gkd", "student"), ("distillm", "adaptive"), ("fdd", "dataset")])
def test_the_gpu_causal_preset_composes_with_every_rollout_source(make_config, loss, source):
    """experiment=causal_gpu sizes the run and leaves the source to the loss preset; the settings
    pass the checks that run before any work."""
    from kdsuite.config_checks import check_settings

    cfg = make_config("experiment=causal_gpu", f"loss={loss}")
    assert (cfg.teacher.name, cfg.student.name, cfg.dataset.name) == ("smollm2", "smollm2_l6", "sharegpt")
    assert cfg.rollout.source == source and cfg.trainer.max_steps == 500 and cfg.dataset.split_sizes.train == 2000
    check_settings(cfg)


def test_causal_real_preset_uses_the_gguf_teacher_as_it_comes(make_config):
    cfg = make_config("experiment=causal_real")
    assert (cfg.teacher.name, cfg.student.name, cfg.dataset.name) == ("smollm2", "smollm2_l6", "sharegpt")
    assert cfg.teacher.finetune is None and cfg.teacher.gguf_file.endswith(".gguf")
    assert cfg.teacher.hub_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cfg.dataset.template == "chat" and cfg.loss.temperature == 1.0
    assert instantiate(cfg.mapping)(6, 30) == [(1, 6), (2, 12), (3, 18), (4, 24)]
