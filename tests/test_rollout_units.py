"""The rollout's parts on their own: prompts taken back out of batches padded on either side, the
batch made of samples, the on-policy fraction's schedules, DistiLLM's adaptive threshold and replay
buffer (their state round trips), the settings' checks naming their keys, and every rollout option
and loss preset composing with the causal experiments."""

import random
from types import SimpleNamespace

import pytest
import torch
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from transformers import AutoConfig, AutoModelForCausalLM

from kdsuite.rollout.callback import RolloutCallback
from kdsuite.rollout.sampling import SamplingSettings, batch_prompts, cut_after_eos, sample_responses, training_batch
from kdsuite.rollout.schedules import AdaptiveThreshold, ReplayBuffer, on_policy_fraction
from kdsuite.rollout.settings import RolloutSettings, check_rollout, rollout_settings, steps_per_epoch
from kdsuite.rollout.sources import AdaptiveRollout, StudentRollout
from kdsuite.tracks import get_task


def right_and_left_padded():
    """Two rows, prompt [5, 6, 7] + response [8, 9] and prompt [4] + response [3], padded with 0."""
    right = {"input_ids": torch.tensor([[5, 6, 7, 8, 9], [4, 3, 0, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]),
             "labels": torch.tensor([[-100, -100, -100, 8, 9], [-100, 3, -100, -100, -100]])}
    left = {"input_ids": torch.tensor([[5, 6, 7, 8, 9], [0, 0, 0, 4, 3]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]),
            "labels": torch.tensor([[-100, -100, -100, 8, 9], [-100, -100, -100, -100, 3]])}
    return right, left


def test_prompts_come_back_out_of_batches_padded_on_either_side():
    for batch in right_and_left_padded():
        assert [p.tolist() for p in batch_prompts(batch)] == [[5, 6, 7], [4]]


def test_a_batch_of_samples_masks_the_prompt_and_pads_on_the_right():
    batch = training_batch([torch.tensor([5, 6, 7]), torch.tensor([4])],
                           [torch.tensor([11, 2]), torch.tensor([12, 13, 2])], 0, torch.tensor([3, 1]))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 11, 2], [4, 12, 13, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 11, 2], [-100, 12, 13, 2, -100]]
    assert batch["example_index"].tolist() == [3, 1]
    assert cut_after_eos(torch.tensor([7, 2, 9, 2]), 2).tolist() == [7, 2]
    assert cut_after_eos(torch.tensor([7, 8]), 2).tolist() == [7, 8]


def test_sampling_continues_each_prompt_without_gradient_and_restores_training_mode():
    config = AutoConfig.for_model("gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=30, n_positions=64)
    model = AutoModelForCausalLM.from_config(config).train()
    torch.manual_seed(0)
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([4])]
    responses = sample_responses(model, prompts, SamplingSettings(1.0, 1.0, 5), pad_token_id=0, eos_token_id=None)
    assert model.training and [len(r) for r in responses] == [5, 5]
    assert not any(r.requires_grad for r in responses)
    # the left-padded short prompt is continued as it would be alone (padding is masked)
    torch.manual_seed(1)
    alone = sample_responses(model, prompts[1:], SamplingSettings(1e-4, 1.0, 3), 0, None)  # ~greedy
    torch.manual_seed(1)
    together = sample_responses(model, prompts, SamplingSettings(1e-4, 1.0, 3), 0, None)
    assert together[1].tolist() == alone[0].tolist()


def test_on_policy_fraction_constant_and_linear():
    assert on_policy_fraction(0.5, "constant", 7, 10) == 0.5
    assert [on_policy_fraction(1.0, "linear", step, 4) for step in range(4)] == [0.0, 0.25, 0.5, 0.75]
    assert on_policy_fraction(0.4, "linear", 5, 10) == pytest.approx(0.2)


def test_adaptive_threshold_rises_when_validation_loss_rises_and_only_then():
    schedule = AdaptiveThreshold(init_threshold=0.0, loss_eps=0.1, threshold_step=0.1, replay_ratio="decreasing")
    schedule.observe_validation_loss(2.0)  # before training: the reference
    assert schedule.threshold == 0.0 and schedule.previous_loss == 2.0
    schedule.observe_validation_loss(1.5)  # falling: nothing changes, the reference stays
    schedule.observe_validation_loss(2.05)  # above the reference by less than eps
    assert schedule.threshold == 0.0 and schedule.previous_loss == 2.0
    schedule.observe_validation_loss(2.2)  # rose by >= eps: +0.1, and the reference moves up
    assert schedule.threshold == pytest.approx(0.1) and schedule.previous_loss == 2.2
    for loss in (2.4, 2.6, 2.8, 3.0, 3.2, 3.4, 3.6, 3.8, 4.0, 4.2, 4.4):
        schedule.observe_validation_loss(loss)
    assert schedule.threshold == 1.0  # capped


def test_adaptive_choice_follows_distillm():
    schedule = AdaptiveThreshold(0.6, 0.1, 0.1, "decreasing")
    # at t/T = 0.5 fresh samples below 0.3; replay up to 0.6 once the buffer is full; data above
    assert schedule.choose(0.29, 5, 10, buffer_size=8, capacity=8) == "generate"
    assert schedule.choose(0.31, 5, 10, buffer_size=8, capacity=8) == "replay"
    assert schedule.choose(0.31, 5, 10, buffer_size=3, capacity=8) == "generate"  # buffer not yet full
    assert schedule.choose(0.61, 5, 10, buffer_size=3, capacity=8) == "data"
    assert AdaptiveThreshold(0.6, 0.1, 0.1, "increasing").sampling_threshold(2, 10) == pytest.approx(0.12)
    assert AdaptiveThreshold(0.6, 0.1, 0.1, "constant").sampling_threshold(2, 10) == pytest.approx(0.3)
    assert AdaptiveThreshold(0.0, 0.1, 0.1, "decreasing").choose(0.0001, 0, 10, 0, 8) == "data"  # threshold 0


def test_replay_buffer_keeps_the_newest_and_its_state_round_trips():
    buffer = ReplayBuffer(capacity=3, seed=0)
    buffer.add([torch.tensor([i]) for i in range(5)], [torch.tensor([10 + i]) for i in range(5)], torch.arange(5))
    assert len(buffer) == 3 and [e[2] for e in buffer.examples] == [2, 3, 4]
    copy = ReplayBuffer(capacity=3, seed=99)
    copy.load_state_dict(buffer.state_dict())
    first, second = buffer.sample(2), copy.sample(2)
    assert first[2].tolist() == second[2].tolist() and len(first[0]) == 2


def test_adaptive_source_state_round_trips_through_torch_save(tmp_path):
    settings = RolloutSettings(source="adaptive", init_threshold=0.3, capacity=4)
    source = AdaptiveRollout(settings, 0, 2, seed=1)
    source.observe_validation_loss(3.0)
    source.observe_validation_loss(3.5)
    source.buffer.add([torch.tensor([1, 2])], [torch.tensor([3])], torch.tensor([0]))
    source.random.random()
    torch.save(source.state_dict(), tmp_path / "state.pt")
    restored = AdaptiveRollout(settings, 0, 2, seed=1)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert restored.schedule.threshold == pytest.approx(0.4) and restored.schedule.previous_loss == 3.5
    assert len(restored.buffer) == 1 and restored.random.random() == source.random.random()


def test_lambda_zero_never_touches_the_batch_or_the_global_rngs():
    source = StudentRollout(RolloutSettings(source="student", fraction=0.0), 0, 2, seed=0)
    batch = right_and_left_padded()[0]
    torch_state, python_state = torch.random.get_rng_state(), random.getstate()
    for step in range(20):
        assert source.batch_for_step(None, batch, step, 20) is batch
    assert torch.equal(torch.random.get_rng_state(), torch_state) and random.getstate() == python_state


@pytest.mark.parametrize("key,value,message", [
    ("lambda", 1.5, r"rollout.lambda=1.5 must lie in \[0, 1\]"),
    ("lambda", -0.1, r"rollout.lambda=-0.1 must lie in \[0, 1\]"),
    ("max_new_tokens", 0, r"rollout.max_new_tokens=0 must be a positive integer"),
    ("schedule", "cosine", r"rollout.schedule='cosine' is not one of \['constant', 'linear'\]"),
    ("top_p", 0.0, r"rollout.top_p=0.0 must lie in \(0, 1\]"),
    ("capacity", 0, r"rollout.capacity=0 must be >= 1"),
    ("lamda", 0.5, r"rollout.lamda is not a rollout setting"),
    ("validation_interval", 0, r"rollout.validation_interval=0 must be null \(once per epoch\) or an integer >= 1"),
    ("validation_interval", 2.5, r"rollout.validation_interval=2.5 must be null"),
])
def test_settings_refuse_bad_values_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        rollout_settings({"source": "student", key: value})


def test_validation_interval_defaults_to_one_epoch_counted_as_distillm_counts_it():
    """DistiLLM's --eval-interval -1 becomes train_iters_per_epoch = int(N / (batch * world * accum)):
    103 examples, batch 4, accumulation 2, 3 processes -> 4 optimizer steps; an integer overrides."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        preset = compose(config_name="config", overrides=["experiment=causal_smoke", "rollout=adaptive"]).rollout
    assert preset.validation_interval is None
    trainer = SimpleNamespace(train_dataset=list(range(103)), args=SimpleNamespace(
        per_device_train_batch_size=4, gradient_accumulation_steps=2, world_size=3))
    epoch = RolloutCallback(trainer, AdaptiveRollout(rollout_settings(preset), 0, 2, seed=0))
    assert epoch.validation_interval == 103 // (4 * 2 * 3) == 4
    fixed = RolloutCallback(trainer, AdaptiveRollout(rollout_settings({**preset, "validation_interval": 7}), 0, 2, 0))
    assert fixed.validation_interval == 7
    assert steps_per_epoch(5, 4, 2, 3) == 1  # fewer examples than one step's worth: still one step


def test_sources_refuse_what_they_cannot_be_combined_with():
    student = RolloutSettings(source="student", fraction=0.5)
    with pytest.raises(ValueError, match="rollout=student generates responses; task 'rte' trains sequence classif"):
        check_rollout(student, get_task("rte"), "kd", True, "live")
    with pytest.raises(ValueError, match="loss=ce reads none"):
        check_rollout(student, get_task("dolly"), "ce", False, "live")
    with pytest.raises(ValueError, match="teacher.outputs=cached holds the teacher's outputs on the data's text"):
        check_rollout(RolloutSettings(source="adaptive"), get_task("dolly"), "kd", True, "cached")
    check_rollout(RolloutSettings(source="teacher"), get_task("dolly"), "ce", False, "cached")  # SeqKD: fine
    check_rollout(RolloutSettings(source="dataset", fraction=3.0), get_task("rte"), "ce", False, "cached")


@pytest.mark.parametrize("experiment", ["causal_smoke", "causal_real"])
@pytest.mark.parametrize("loss,source", [("gkd", "student"), ("imitkd", "student"), ("seqkd", "teacher"),
                                         ("distillm", "adaptive")])
def test_presets_compose_with_the_causal_experiments(experiment, loss, source):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}", f"loss={loss}"])
        assert cfg.rollout.source == source and rollout_settings(cfg.rollout).source == source
        overridden = compose(config_name="config", overrides=[f"experiment={experiment}", f"loss={loss}",
                                                              "rollout.max_new_tokens=7"])
        assert overridden.rollout.max_new_tokens == 7  # the command line wins over the preset
    expected = {"gkd": ("jsd", 0.5, "constant"), "imitkd": ("forward_kl", 1.0, "linear"),
                "distillm": ("skew_kl", None, None), "seqkd": (None, None, None)}[loss]
    assert (cfg.loss.get("divergence"), cfg.rollout.get("lambda"), cfg.rollout.get("schedule")) == expected


def test_every_rollout_option_composes_and_the_sweep_preset_searches_lambda_beta_and_t():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for option in ("dataset", "teacher", "student", "adaptive"):
            cfg = compose(config_name="config", overrides=["experiment=causal_smoke", f"rollout={option}"])
            assert rollout_settings(cfg.rollout).source == option
        cfg = compose(config_name="config", overrides=["experiment=causal_real", "sweep=gkd_weights"],
                      return_hydra_config=True)
    assert set(cfg.hydra.sweeper.params) == {"rollout.lambda", "loss.beta", "loss.temperature"}
    assert cfg.rollout.source == "student" and cfg.loss.divergence == "jsd"


def test_checkpoint_files_name_the_rollout_state_of_every_process():
    from omegaconf import OmegaConf

    from kdsuite.rollout import checkpoint_files

    assert checkpoint_files(OmegaConf.create({"rollout": {"source": "dataset"}}), 2) == ()
    adaptive = OmegaConf.create({"rollout": {"source": "adaptive"}})
    assert checkpoint_files(adaptive) == ("rollout_state.pt",)
    assert checkpoint_files(adaptive, 3) == ("rollout_state.pt", "rollout_state_1.pt", "rollout_state_2.pt")
