"""Decoding with several members at once (an image and its mirror image, or several trained decoders): each
next word's probability is the mean of the members' probabilities.

`Averaged` is one decoder to every decoding strategy: its state is the members' states side by side (their
entries prefixed with the member's number), and its logits are the log of the members' mean probabilities.
Its attention weights are the first member's: a mirror image's weights fall on mirrored regions, and their
mean with the plain view's would point at neither.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from captioner.models.decoders import Decoder, State


class Averaged(Decoder):
    def __init__(self, members: list[Decoder]) -> None:
        super().__init__()
        if not members or len({member.uses_grid for member in members}) != 1:
            raise ValueError("averaging needs decoders that all read the grid or all read pooled features")
        self.members = nn.ModuleList(members)
        self.uses_grid = members[0].uses_grid
        self.per_image_state = tuple(f"{index}.{name}" for index, member in enumerate(members)
                                     for name in member.per_image_state)

    def start(self, features: torch.Tensor) -> State:
        """features (B, M, ...): member m reads features[:, m] (one view of the image per member)."""
        if features.shape[1] != len(self.members):
            raise ValueError(f"{len(self.members)} members need {len(self.members)} views per image, "
                             f"got {features.shape[1]}")
        return self._join([member.start(features[:, index]) for index, member in enumerate(self.members)])

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        log_probs, states, alphas = [], [], []
        for member, member_state in zip(self.members, self._split(state)):
            logits, member_state, alpha = member.step(tokens, member_state)
            log_probs.append(torch.log_softmax(logits.float(), dim=-1))
            states.append(member_state)
            alphas.append(alpha)
        mean = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(log_probs))
        return mean, self._join(states), alphas[0]

    def _join(self, states: list[State]) -> State:
        return {f"{index}.{name}": value for index, state in enumerate(states) for name, value in state.items()}

    def _split(self, state: State) -> list[State]:
        split: list[State] = [{} for _ in self.members]
        for key, value in state.items():
            index, name = key.split(".", 1)
            split[int(index)][name] = value
        return split
