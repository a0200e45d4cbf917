"""When a step trains on student samples: the on-policy fraction of GKD/ImitKD, DistiLLM's adaptive
threshold, and DistiLLM's replay buffer. Each holds its whole state in `state_dict()`, which the
run's checkpoints keep (`rollout_state.pt`), so a resumed run continues where it stopped.
"""

from __future__ import annotations

import random
from collections import deque

import torch


def on_policy_fraction(fraction: float, schedule: str, step: int, total_steps: int) -> float:
    """The probability that optimizer step `step` (0-based) of `total_steps` trains on samples.

    constant: `lambda` throughout (GKD, Agarwal et al. 2024, Algorithm 1).
    linear:   `lambda * step / total_steps`, from 0 at the first step towards `lambda` at the last.
              ImitKD (Lin et al. 2020) anneals the weight of the data (the "oracle") in its mixture
              policy linearly from 1 to 0, i.e. the student's share from 0 to 1; `lambda` caps it.
    """
    if schedule == "linear":
        return fraction * step / max(total_steps, 1)
    return fraction


class AdaptiveThreshold:
    """DistiLLM's adaptive off-policy schedule (Ko et al. 2024, Sec. 3.2; `finetune.py` of
    jongwooko/distillm, followed line by line):

    - the threshold starts at `init_threshold` (0 in the official scripts);
    - `prev` is the validation loss before training; at each validation, if
      `loss >= prev + loss_eps` the threshold rises by 0.1 (at most 1) and `prev` becomes `loss`
      (`prev` is updated only then: a falling loss leaves it where it was);
    - at step t of T the probability of fresh student samples is `threshold * ratio(t)` with
      `ratio` decreasing `1 - t/T` (the official default), increasing `t/T` or constant 0.5; with
      probability up to `threshold` the step replays the buffer (or generates while the buffer is
      not yet full); otherwise it trains on the data.
    """

    def __init__(self, init_threshold: float, loss_eps: float, threshold_step: float, replay_ratio: str):
        self.threshold = init_threshold
        self.loss_eps, self.threshold_step, self.replay_ratio = loss_eps, threshold_step, replay_ratio
        self.previous_loss: float | None = None

    def observe_validation_loss(self, loss: float) -> None:
        if self.previous_loss is None:
            self.previous_loss = loss
        elif loss >= self.previous_loss + self.loss_eps:
            self.threshold = min(self.threshold + self.threshold_step, 1.0)
            self.previous_loss = loss

    def sampling_threshold(self, step: int, total_steps: int) -> float:
        progress = step / max(total_steps, 1)
        if self.replay_ratio == "constant":
            return self.threshold * 0.5
        if self.replay_ratio == "increasing":
            return self.threshold * progress
        return self.threshold * (1.0 - progress)

    def choose(self, draw: float, step: int, total_steps: int, buffer_size: int, capacity: int) -> str:
        """"generate", "replay" or "data" for a uniform `draw` in [0, 1), as DistiLLM's loop does."""
        if draw < self.sampling_threshold(step, total_steps) or (draw < self.threshold and buffer_size < capacity):
            return "generate"
        if draw < self.threshold:
            return "replay"
        return "data"

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "previous_loss": self.previous_loss}

    def load_state_dict(self, state: dict) -> None:
        self.threshold, self.previous_loss = state["threshold"], state["previous_loss"]


class ReplayBuffer:
    """The newest `capacity` generated examples (prompt ids, response ids, example index), on the
    CPU; `sample(k)` draws k of them without replacement (DistiLLM's `distillm/buffer.py`: a deque
    and `random.sample`), from this buffer's own seeded generator."""

    def __init__(self, capacity: int, seed: int):
        self.examples: deque = deque(maxlen=capacity)
        self.random = random.Random(seed)

    def __len__(self) -> int:
        return len(self.examples)

    def add(self, prompts: list[torch.Tensor], responses: list[torch.Tensor], example_index: torch.Tensor) -> None:
        for prompt, response, index in zip(prompts, responses, example_index.tolist()):
            self.examples.append((prompt.cpu(), response.cpu(), index))

    def sample(self, count: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        chosen = self.random.sample(list(self.examples), k=min(count, len(self.examples)))
        return [c[0] for c in chosen], [c[1] for c in chosen], torch.tensor([c[2] for c in chosen])

    def state_dict(self) -> dict:
        return {"examples": list(self.examples), "random": self.random.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.examples = deque(state["examples"], maxlen=self.examples.maxlen)
        self.random.setstate(state["random"])
