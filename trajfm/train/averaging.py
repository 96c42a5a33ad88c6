"""Weight averaging: an exponential moving average of the weights beside the training weights
(``TrainConfig.ema_decay``), validated, kept and returned in their place."""

from __future__ import annotations

import contextlib

import torch

from trajfm.model.gpt import TrajGPT


class WeightAverage:
    """Exponential moving average of a model's trainable weights (Polyak averaging): after each
    optimizer step t (1-based), ``avg = d_t * avg + (1 - d_t) * weights`` with
    ``d_t = min(decay, (1 + t) / (10 + t))``. The warm-up term lets the average forget the
    first, poor iterates quickly, and keeps its span at about a tenth of the steps run so far
    until ``decay`` caps it (0.999: about the last 1,000 steps), so one setting suits short and
    long runs. ``swapped()`` puts the average into the model for a while (validation,
    checkpoints) and the training weights back after."""

    def __init__(self, model: TrajGPT, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.avg = [p.detach().clone() for p in self.params]

    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for a, p in zip(self.avg, self.params):
                a.lerp_(p.detach(), 1.0 - d)

    def apply(self) -> None:
        """Copy the average into the model's weights."""
        with torch.no_grad():
            for p, a in zip(self.params, self.avg):
                p.copy_(a)

    @contextlib.contextmanager
    def swapped(self):
        training = [p.detach().clone() for p in self.params]
        self.apply()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, training):
                    p.copy_(w)

    def state(self) -> list[torch.Tensor]:
        return [a.detach().cpu().clone() for a in self.avg]

    def load(self, state: list[torch.Tensor]) -> None:
        if len(state) != len(self.avg):
            raise ValueError(f"weight average of {len(state)} tensors for {len(self.avg)} parameters")
        with torch.no_grad():
            for a, s in zip(self.avg, state):
                a.copy_(s)
