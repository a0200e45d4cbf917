"""Rollout sources: one object per run that turns the data's batch into the batch a step trains on.

This is the seam for a faster generator (a vLLM engine on a GPU): a source only needs
`batch_for_step(model, batch, step, total_steps) -> batch`, `state_dict`/`load_state_dict` and
`pop_metrics`; `sample_responses` is the one place that calls `generate`.

Choices where the papers' code is silent or does not apply:
- The coin of each micro-batch comes from the source's own `random.Random(seed)`, not from the
  global RNGs: `lambda = 0` then leaves a run bitwise equal to `rollout=dataset` on one process
  without accumulation (no draw touches dropout's or the sampler's RNG; with accumulation or ranks
  the two differ in weighting only, see below), and every DDP rank, seeded alike, takes the same branch in a
  step while generating for its own shard of prompts.
- Generation itself draws from the global torch RNG (as `generate` does), which the Trainer's
  checkpoints restore; the coin's state, the schedule and the replay buffer are in
  `rollout_state.pt` (`rollout_state_<rank>.pt` for ranks > 0) beside them.
- Under a source that replaces batches (`student`, `adaptive`) every micro-batch is the mean over
  its own response tokens, divided by the micro-batches of its step (g, or fewer in an epoch's
  short last step), whether its text is the data's or generated: each micro-batch of an optimizer
  step weighs 1/g, and under DDP each rank's step weighs alike, as in TRL's GKDTrainer (its loss is a
  per-micro-batch mean, which the Trainer divides by g). The Trainer's `num_items_in_batch` counts
  the data's response tokens of all g micro-batches before any is replaced, so weighting data
  micro-batches by it and generated ones by 1/g would give a step whose weights do not sum to 1
  (with g = 2: 1/2 for the generated one, plus the data one's share of both data micro-batches'
  tokens; `tests/test_rollout_runs.py` checks the sum per step). The `dataset` and `teacher`
  sources keep the token-weighted mean over the whole step.
"""

from __future__ import annotations

import random
import time

import torch

from kdsuite.distributed import all_reduce_sum
from kdsuite.rollout.sampling import SamplingSettings, batch_prompts, sample_responses, training_batch
from kdsuite.rollout.schedules import AdaptiveThreshold, ReplayBuffer, on_policy_fraction
from kdsuite.rollout.settings import RolloutSettings

STATE_FILE = "rollout_state.pt"  # in every checkpoint of a run whose rollout is not `dataset`


def state_file_name(rank: int) -> str:
    """The state file of process `rank` inside a checkpoint folder."""
    return STATE_FILE if rank == 0 else f"rollout_state_{rank}.pt"


class GenerationCost:
    """Seconds spent generating, tokens generated, seconds of whole training steps and steps, summed
    over a logging window; `pop` gives the window's `rollout/*` metrics (collective under DDP)."""

    def __init__(self):
        self.sums = torch.zeros(4, dtype=torch.float64)  # generation s, tokens, step s, steps

    def add_generation(self, seconds: float, tokens: int) -> None:
        self.sums[0] += seconds
        self.sums[1] += tokens

    def add_step(self, seconds: float) -> None:
        self.sums[2] += seconds
        self.sums[3] += 1

    def pop(self, device: torch.device) -> dict[str, float]:
        sums = all_reduce_sum(self.sums.to(device, copy=True)).cpu()
        self.sums.zero_()
        generation_seconds, tokens, step_seconds, steps = sums.tolist()
        if steps == 0:
            return {}
        return {
            "rollout/seconds_per_step": generation_seconds / steps,
            "rollout/tokens_per_second": tokens / generation_seconds if generation_seconds > 0 else 0.0,
            "rollout/time_fraction": generation_seconds / step_seconds if step_seconds > 0 else 0.0,
        }


class RolloutSource:
    """Base: trains on the data's batch unchanged (what `rollout=teacher` does during training,
    its text having been swapped in before; see `teacher_store`)."""

    needs_teacher_model = False  # the run must load the teacher even if the loss reads none
    replaces_batches = False  # may swap a micro-batch's text for generated text (see the module docstring)
    evaluates = False  # wants the validation loss every `settings.validation_interval` steps (null: an epoch)
    needs_reference_loss = False  # wants the validation loss before the first step

    def __init__(self, settings: RolloutSettings, pad_token_id: int, eos_token_id: int | None, seed: int):
        self.settings = settings
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id
        self.sampling = SamplingSettings(settings.temperature, settings.top_p, settings.max_new_tokens)
        self.random = random.Random(seed)
        self.cost = GenerationCost()
        self.fraction_now = 0.0

    def batch_for_step(self, model, batch: dict, step: int, total_steps: int) -> dict:
        return batch

    def observe_validation_loss(self, loss: float) -> None:
        pass

    def generate(self, model, prompts: list[torch.Tensor]) -> list[torch.Tensor]:
        started = time.perf_counter()
        responses = sample_responses(model, prompts, self.sampling, self.pad_token_id, self.eos_token_id)
        self.cost.add_generation(time.perf_counter() - started, sum(len(response) for response in responses))
        return responses

    def as_batch(self, prompts, responses, example_index, like: dict) -> dict:
        batch = training_batch(prompts, responses, self.pad_token_id, example_index)
        return {key: value.to(like["input_ids"].device) for key, value in batch.items()}

    def pop_metrics(self, device: torch.device) -> dict[str, float]:
        return self.cost.pop(device)

    def state_dict(self) -> dict:
        return {"random": self.random.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.random.setstate(state["random"])


class TeacherRollout(RolloutSource):
    """SeqKD: the run's training set is the teacher's responses (`teacher_store.teacher_train_set`),
    so each step trains on the batch it is given."""

    needs_teacher_model = True

    def pop_metrics(self, device: torch.device) -> dict[str, float]:
        return {}  # nothing is generated during training (the store's manifest has the one-off cost)


class StudentRollout(RolloutSource):
    """On-policy (GKD; ImitKD with `schedule=linear`): with probability `lambda(step)` a micro-batch's
    responses are replaced by the student's samples of its prompts."""

    replaces_batches = True

    def batch_for_step(self, model, batch: dict, step: int, total_steps: int) -> dict:
        self.fraction_now = on_policy_fraction(self.settings.fraction, self.settings.schedule, step, total_steps)
        if not self.random.random() < self.fraction_now:
            return batch
        prompts = batch_prompts(batch)
        return self.as_batch(prompts, self.generate(model, prompts), batch.get("example_index"), batch)

    def pop_metrics(self, device: torch.device) -> dict[str, float]:
        return {**self.cost.pop(device), "rollout/lambda": self.fraction_now}


class AdaptiveRollout(RolloutSource):
    """DistiLLM: fresh samples, replayed samples or the data, chosen per micro-batch by
    `AdaptiveThreshold`; fresh samples go into the replay buffer."""

    evaluates = True
    replaces_batches = True

    def __init__(self, settings: RolloutSettings, pad_token_id: int, eos_token_id: int | None, seed: int):
        super().__init__(settings, pad_token_id, eos_token_id, seed)
        self.schedule = AdaptiveThreshold(settings.init_threshold, settings.loss_eps, settings.threshold_step,
                                          settings.replay_ratio)
        self.buffer = ReplayBuffer(settings.capacity, seed + 1)
        self.last_validation_loss = float("nan")
        self.choices = {"generate": 0, "replay": 0, "data": 0}

    @property
    def needs_reference_loss(self) -> bool:
        """True until the validation loss before training has been measured (or restored)."""
        return self.schedule.previous_loss is None

    def observe_validation_loss(self, loss: float) -> None:
        self.last_validation_loss = loss
        self.schedule.observe_validation_loss(loss)

    def batch_for_step(self, model, batch: dict, step: int, total_steps: int) -> dict:
        choice = self.schedule.choose(self.random.random(), step, total_steps, len(self.buffer),
                                      self.settings.capacity)
        self.choices[choice] += 1
        if choice == "data":
            return batch
        if choice == "replay":
            return self.as_batch(*self.buffer.sample(len(batch["input_ids"])), batch)
        prompts = batch_prompts(batch)
        responses = self.generate(model, prompts)
        index = batch.get("example_index", torch.full((len(prompts),), -1))
        self.buffer.add(prompts, responses, index)
        return self.as_batch(prompts, responses, index, batch)

    def pop_metrics(self, device: torch.device) -> dict[str, float]:
        metrics = {**self.cost.pop(device), "rollout/threshold": self.schedule.threshold,
                   "rollout/buffer_size": float(len(self.buffer))}
        if self.last_validation_loss == self.last_validation_loss:  # not NaN: a validation happened
            metrics["rollout/validation_loss"] = self.last_validation_loss
        return metrics

    def state_dict(self) -> dict:
        return {**super().state_dict(), "schedule": self.schedule.state_dict(), "buffer": self.buffer.state_dict(),
                "last_validation_loss": self.last_validation_loss}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.schedule.load_state_dict(state["schedule"])
        self.buffer.load_state_dict(state["buffer"])
        self.last_validation_loss = state["last_validation_loss"]


SOURCE_CLASSES = {"teacher": TeacherRollout, "student": StudentRollout, "adaptive": AdaptiveRollout}
