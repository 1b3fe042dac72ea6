"""The data: handwritten digits split into training and test sets, and the article's tasks.

By default scikit-learn's 8x8 handwritten digits (1797 real images shipped inside the package, so
it runs offline); MNIST (28x28) through torchvision with ``--data mnist``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lossbench.bench.convergence import ConvergenceError

DATA_SETS = ("digits", "mnist")

# Fixed split of scikit-learn's 1797 digits: 20 % for testing, stratified, always the same.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

PRIME_DIGITS = (2, 3, 5, 7)


@dataclass(frozen=True)
class DigitData:
    """Images of handwritten digits with their labels, split into training and test sets.

    Images are float32 of shape (N, 1, H, W) scaled to [0, 1]; labels are int64 of shape (N,)
    holding digits 0..9.
    """

    name: str
    description: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return tuple(self.train_images.shape[-2:])

    def to(self, device: torch.device) -> DigitData:
        """The same data with every tensor on ``device``."""
        return DigitData(
            self.name,
            self.description,
            self.train_images.to(device),
            self.train_labels.to(device),
            self.test_images.to(device),
            self.test_labels.to(device),
        )


def load_digits_data() -> DigitData:
    """scikit-learn's 8x8 handwritten digits, offline: 1437 training and 360 test images.

    The 1797 images (pixel values 0..16) are scaled to [0, 1]; the split is stratified and fixed
    (``DIGITS_SPLIT_SEED``), so every run and every machine trains on the same images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).to(torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target).to(torch.int64)
    train_index, test_index = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=labels.numpy(),
    )
    train_index, test_index = torch.from_numpy(train_index), torch.from_numpy(test_index)
    return DigitData(
        name="digits",
        description="scikit-learn 8x8 digits",
        train_images=images[train_index],
        train_labels=labels[train_index],
        test_images=images[test_index],
        test_labels=labels[test_index],
    )


def load_mnist_data(root: Path, download: bool = False) -> DigitData:
    """MNIST through torchvision: 60000 training and 10000 test images of 28x28, scaled to [0, 1].

    Reads ``root/MNIST/raw``; with ``download=True`` fetches the files there first (needs a
    network). Raises ``ConvergenceError`` naming the root when the files are missing.
    """
    from torchvision.datasets import MNIST

    splits = {}
    for train in (True, False):
        try:
            dataset = MNIST(str(root), train=train, download=download)
        except RuntimeError as error:
            hint = (
                "the download failed (is there a network?)"
                if download
                else "pass --download where a network exists"
            )
            raise ConvergenceError(f"MNIST is not under {root}: {hint} ({error})") from error
        except OSError as error:
            raise ConvergenceError(f"MNIST could not be downloaded to {root}: {error}") from error
        images = dataset.data.to(torch.float32).div_(255.0).unsqueeze(1)
        splits[train] = (images, dataset.targets.to(torch.int64))
    return DigitData(
        name="mnist",
        description="MNIST 28x28",
        train_images=splits[True][0],
        train_labels=splits[True][1],
        test_images=splits[False][0],
        test_labels=splits[False][1],
    )


# --- Tasks ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One of the article's task types: how many outputs, which targets, which losses."""

    name: str
    description: str
    n_outputs: int
    losses: tuple[str, ...]
    make_targets: Callable[[torch.Tensor], torch.Tensor]

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The targets of digit ``labels`` (N,) int64, matching the model's (N, n_outputs)."""
        return self.make_targets(labels)


def _multilabel_targets(labels: torch.Tensor) -> torch.Tensor:
    primes = torch.tensor(PRIME_DIGITS, device=labels.device)
    even = labels % 2 == 0
    five_or_more = labels >= 5
    prime = torch.isin(labels, primes)
    return torch.stack((even, five_or_more, prime), dim=1).to(torch.float32)


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "multiclass",
            "which digit (10 classes)",
            10,
            # linear_cross_entropy: the last layer and the cross-entropy in one loss.
            ("cross_entropy", "softmax_focal_loss", "linear_cross_entropy"),
            lambda labels: labels,
        ),
        Task(
            "binary",
            "digit >= 5",
            1,
            ("binary_cross_entropy_with_logits", "sigmoid_focal_loss"),
            lambda labels: (labels >= 5).to(torch.float32).unsqueeze(1),
        ),
        Task(
            "multilabel",
            "{even, >= 5, prime}",
            3,
            ("binary_cross_entropy_with_logits", "sigmoid_focal_loss"),
            _multilabel_targets,
        ),
    )
}
