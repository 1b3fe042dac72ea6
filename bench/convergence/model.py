"""The article's CNN, corrected, and the optimizer every implementation trains it with."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional

from lossbench.bench.convergence.data import Task

# The article's network and training setup.
CONV_CHANNELS = 16
HIDDEN_UNITS = 128
LEARNING_RATE = 1e-3


class DigitCNN(nn.Module):
    """The article's CNN, corrected: conv 1->16 3x3 (padding 1), ReLU, 2x2 max-pool, flatten,
    fc 16*(H/2)*(W/2) -> 128, ReLU, fc 128 -> ``n_outputs``.

    Input (N, 1, H, W) float images; output (N, n_outputs) logits. ``features`` stops before the
    last layer: (N, 128), what a linear cross-entropy takes with ``fc2``'s weight and bias.
    """

    def __init__(self, height: int, width: int, n_outputs: int) -> None:
        super().__init__()
        if height < 2 or width < 2:
            raise ValueError(f"images must be at least 2x2 for the 2x2 pool, got {height}x{width}")
        self.conv = nn.Conv2d(1, CONV_CHANNELS, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(CONV_CHANNELS * (height // 2) * (width // 2), HIDDEN_UNITS)
        self.fc2 = nn.Linear(HIDDEN_UNITS, n_outputs)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The hidden features (N, 128) that the last layer, fc2, turns into logits."""
        features = self.pool(functional.relu(self.conv(images)))
        # The article's code skips this flatten, so its fc1 never receives a matrix.
        features = torch.flatten(features, start_dim=1)
        return functional.relu(self.fc1(features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(images))


def initial_state(task: Task, image_size: tuple[int, int], seed: int) -> dict[str, torch.Tensor]:
    """The initial weights of the CNN for ``task``: drawn once from ``seed``, on the CPU.

    Every implementation starts from a copy of this state. Torch's global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitCNN(*image_size, task.n_outputs)
    return copy.deepcopy(model.state_dict())


def build_model_and_optimizer(
    task: Task,
    image_size: tuple[int, int],
    state: dict[str, torch.Tensor],
    device: torch.device,
    learning_rate: float = LEARNING_RATE,
) -> tuple[DigitCNN, torch.optim.Adam]:
    """A CNN for ``task`` loaded with ``state`` on ``device``, and its Adam optimizer.

    The one set-up of every training run: the convergence command, the epoch benchmark and the
    tests all start from here, so they train the same thing.
    """
    model = DigitCNN(*image_size, task.n_outputs)
    model.load_state_dict(state)
    model.to(device)
    return model, torch.optim.Adam(model.parameters(), lr=learning_rate)
