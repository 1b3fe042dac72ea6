"""The article's digit classifier, trained once per loss implementation: the end-to-end check.

The source article ends with a small CNN for handwritten digits (its code does not run: it never
flattens before the first linear layer and sizes that layer 16*14*14*14). This module rebuilds it
correctly and trains it with every implementation of each loss, ``torch``, ``reference`` and
``triton``, from the same initial weights, on the same data in the same order, in float32. If the
fused kernels compute the loss and its gradient as torch does, the curves lie on top of each other.

Three task types from the article, on the same images:

- ``multiclass``: which digit (10 outputs), with cross-entropy and with softmax focal loss;
- ``binary``: is the digit 5 or more (1 output), with BCE-with-logits and with sigmoid focal loss;
- ``multilabel``: {even, 5 or more, prime} at once (3 outputs), with the same two sigmoid losses.

The losses and their options are the harness's (bench/cases.py): reduction 'mean', focal
losses with alpha 0.25 and gamma 2, torch's softmax focal loss written in plain torch there.

Data: by default scikit-learn's 8x8 handwritten digits (1797 real images shipped inside the
package, so it runs offline); MNIST (28x28) through torchvision with ``--data mnist``.

Per step it records the training loss; per epoch the mean training loss, the test 0-1 loss (the
article's error rate, ``reference.zero_one.zero_one_loss``) and the seconds the epoch's training
took (device synchronised, evaluation excluded; without a GPU, triton's seconds are the
interpreter's and every triton row says so in its ``note``). It writes
``results/<device>/convergence.csv`` (long format, one row per value, with provenance and the
data set's name) and ``results/<device>/convergence.png``. Run it as
``python -m bench convergence --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import io
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional
from tqdm import tqdm

from bench.cases import LOSSES, LossFunction, UnavailableError, load_implementation
from bench.measure import synchronize
from bench.report import (
    PROVENANCE_COLUMNS,
    REPOSITORY_ROOT,
    bench_device,
    device_folder,
    device_name,
    provenance,
    write_atomically,
)
from reference.tolerance import relative_error, tolerance

# The article's training setup.
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
CONV_CHANNELS = 16
HIDDEN_UNITS = 128

IMPLEMENTATIONS = ("torch", "reference", "triton")
DATA_SETS = ("digits", "mnist")

# Epochs of the default run. Digits: 45 steps an epoch, about 0.2 s per epoch for torch on one
# CPU thread, seconds for triton in the interpreter. MNIST: 1875 steps an epoch, a few seconds on
# a GPU.
DEFAULT_EPOCHS = {"digits": 10, "mnist": 3}

# CPU threads for training on the CPU: a batch of 32 small images is too little work to split,
# and on a shared machine OpenMP's waiting threads made an epoch 10-100x slower with 2 than with 1
# (measured on 2 loaded cores: 3 to 27 s against 0.22 s).
DEFAULT_CPU_THREADS = 1

# Fixed split of scikit-learn's 1797 digits: 20 % for testing, stratified, always the same.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

# Test images per forward pass in evaluation: bounds the activations of MNIST's 10000 test images.
EVALUATION_CHUNK = 1000

PRIME_DIGITS = (2, 3, 5, 7)


class ConvergenceError(RuntimeError):
    """A run cannot start: an implementation or the data is missing, or an option is wrong."""


# --- Data ------------------------------------------------------------------------------------


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


# --- Tasks -----------------------------------------------------------------------------------


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
            ("cross_entropy", "softmax_focal_loss"),
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


# --- Losses ----------------------------------------------------------------------------------


def loss_function(implementation: str, loss: str) -> LossFunction:
    """``loss(logits, targets)`` of ``implementation`` as the harness runs it (bench/cases.py).

    Reduction 'mean', focal losses with the harness's options (alpha 0.25, gamma 2); the torch
    softmax focal loss is the harness's plain-torch one. Raises ``ValueError`` for an unknown
    name and ``ConvergenceError`` when the implementation cannot be imported (yet).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {list(LOSSES)}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; known: {IMPLEMENTATIONS}")
    try:
        return load_implementation(loss, implementation).function
    except UnavailableError as error:
        raise ConvergenceError(
            f"the {implementation} implementation of {loss} is unavailable: {error}"
        ) from error


def zero_one_metric() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The article's 0-1 loss, ``reference.zero_one.zero_one_loss(logits, targets)`` (mean).

    The fraction of wrong labels: wrong digits for multi-class, wrong 0/1 labels for binary and
    multi-label (each of the three labels counts once).
    """
    try:
        from reference.zero_one import zero_one_loss
    except ImportError as error:
        raise ConvergenceError(f"the 0-1 loss (test metric) is missing: {error}") from error
    return zero_one_loss


# --- Model -----------------------------------------------------------------------------------


class DigitCNN(nn.Module):
    """The article's CNN, corrected: conv 1->16 3x3 (padding 1), ReLU, 2x2 max-pool, flatten,
    fc 16*(H/2)*(W/2) -> 128, ReLU, fc 128 -> ``n_outputs``.

    Input (N, 1, H, W) float images; output (N, n_outputs) logits.
    """

    def __init__(self, height: int, width: int, n_outputs: int) -> None:
        super().__init__()
        if height < 2 or width < 2:
            raise ValueError(f"images must be at least 2x2 for the 2x2 pool, got {height}x{width}")
        self.conv = nn.Conv2d(1, CONV_CHANNELS, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(CONV_CHANNELS * (height // 2) * (width // 2), HIDDEN_UNITS)
        self.fc2 = nn.Linear(HIDDEN_UNITS, n_outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(functional.relu(self.conv(images)))
        # The article's code skips this flatten, so its fc1 never receives a matrix.
        features = torch.flatten(features, start_dim=1)
        return self.fc2(functional.relu(self.fc1(features)))


def initial_state(task: Task, image_size: tuple[int, int], seed: int) -> dict[str, torch.Tensor]:
    """The initial weights of the CNN for ``task``: drawn once from ``seed``, on the CPU.

    Every implementation starts from a copy of this state. Torch's global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitCNN(*image_size, task.n_outputs)
    return copy.deepcopy(model.state_dict())


# --- Training --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingConfig:
    """How long and how to train: the article's batch 32 and Adam lr 1e-3 by default.

    ``max_steps_per_epoch`` cuts every epoch short after that many steps (tiny runs).
    """

    epochs: int
    batch_size: int = BATCH_SIZE
    learning_rate: float = LEARNING_RATE
    seed: int = 0
    max_steps_per_epoch: int | None = None

    def steps_per_epoch(self, n_train: int) -> int:
        """Optimizer steps in one epoch over ``n_train`` images (the last batch may be short)."""
        steps = math.ceil(n_train / self.batch_size)
        if self.max_steps_per_epoch is not None:
            steps = min(steps, self.max_steps_per_epoch)
        return steps


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: its 1-based number, mean training loss, test 0-1 loss, training seconds."""

    epoch: int
    mean_train_loss: float
    test_zero_one_loss: float
    seconds: float


@dataclass
class TrainingRun:
    """What training one implementation recorded.

    ``step_losses[i]`` is the batch-mean loss of step i + 1, taken in epoch ``step_epochs[i]``;
    ``final_state`` holds the weights after the last step, on the CPU.
    """

    task: str
    loss: str
    implementation: str
    step_losses: list[float]
    step_epochs: list[int]
    epochs: list[EpochRecord]
    final_state: dict[str, torch.Tensor]


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Deterministic float32 kernels on CUDA: no TF32 in convolutions or matmuls, no cuDNN autotune.

    cuDNN computes float32 convolutions in TF32 by default, whose 10-bit mantissa would drown the
    differences between loss implementations. Restores the previous settings on exit.
    """
    saved = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        (
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            torch.backends.cuda.matmul.allow_tf32,
        ) = saved


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    compute_loss: LossFunction,
    images: torch.Tensor,
    targets: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    n_steps: int,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One epoch of mini-batch training over ``images[order]``, stopping after ``n_steps``.

    ``order`` (N,) int64 on the images' device; ``targets`` row-aligned with ``images``. Returns
    the (n_steps,) batch-mean losses, still on the device: no host synchronisation per step.
    """
    model.train()
    step_losses = []
    for step in range(n_steps):
        batch = order[step * batch_size : (step + 1) * batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss(model(images[batch]), targets[batch])
        loss.backward()
        optimizer.step()
        step_losses.append(loss.detach())
        if on_step is not None:
            on_step()
    return torch.stack(step_losses)


@torch.no_grad()
def evaluate_error(
    model: nn.Module,
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    targets: torch.Tensor,
) -> float:
    """The 0-1 loss of ``model`` on the test set: the fraction of wrong predictions (labels)."""
    model.eval()
    logits = torch.cat([model(chunk) for chunk in images.split(EVALUATION_CHUNK)])
    return float(metric(logits, targets))


def train(
    data: DigitData,
    task: Task,
    loss: str,
    implementation: str,
    config: TrainingConfig,
    state: dict[str, torch.Tensor],
    device: torch.device,
    progress: tqdm | None = None,
) -> TrainingRun:
    """Train the CNN from ``state`` with one implementation of ``loss``; ``data`` on ``device``.

    The data order comes from a ``torch.Generator`` seeded with ``config.seed``, so every
    implementation sees the same batches in the same order. Float32 throughout.
    """
    compute_loss = loss_function(implementation, loss)
    metric = zero_one_metric()
    model = DigitCNN(*data.image_size, task.n_outputs)
    model.load_state_dict(state)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    train_targets = task.targets(data.train_labels)
    test_targets = task.targets(data.test_labels)
    n_train = len(data.train_labels)
    n_steps = config.steps_per_epoch(n_train)
    # Images per step, to weight each batch mean by its batch in the epoch's mean.
    batch_sizes = torch.tensor(
        [min(config.batch_size, n_train - step * config.batch_size) for step in range(n_steps)],
        dtype=torch.float64,
    )
    order_generator = torch.Generator().manual_seed(config.seed)
    on_step = progress.update if progress is not None else None
    run = TrainingRun(task.name, loss, implementation, [], [], [], {})
    with exact_float32():
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(n_train, generator=order_generator).to(device)
            synchronize(device)
            start = time.perf_counter()
            losses = train_epoch(
                model,
                optimizer,
                compute_loss,
                data.train_images,
                train_targets,
                order,
                config.batch_size,
                n_steps,
                on_step,
            )
            synchronize(device)
            seconds = time.perf_counter() - start
            losses = losses.to("cpu", torch.float64)
            mean_loss = float((losses * batch_sizes).sum() / batch_sizes.sum())
            error = evaluate_error(model, metric, data.test_images, test_targets)
            run.step_losses.extend(losses.tolist())
            run.step_epochs.extend([epoch] * n_steps)
            run.epochs.append(EpochRecord(epoch, mean_loss, error, seconds))
            if progress is not None:
                progress.set_postfix(
                    epoch=epoch, loss=f"{mean_loss:.4f}", test_error=f"{error:.3f}"
                )
    run.final_state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return run


def selected_pairs(tasks: Sequence[str], losses: Sequence[str]) -> list[tuple[Task, str]]:
    """The (task, loss) pairs to train: every loss of each task in ``tasks`` that is in ``losses``.

    Raises ``ConvergenceError`` for unknown names or when no pair is left.
    """
    unknown = [name for name in tasks if name not in TASKS] + [
        name for name in losses if name not in LOSSES
    ]
    if unknown:
        raise ConvergenceError(
            f"unknown task or loss {unknown}; tasks: {list(TASKS)}, losses: {list(LOSSES)}"
        )
    pairs = [(TASKS[name], loss) for name in tasks for loss in TASKS[name].losses if loss in losses]
    if not pairs:
        trained_with = {name: TASKS[name].losses for name in tasks}
        raise ConvergenceError(f"none of the losses {list(losses)} trains {trained_with}")
    return pairs


def run_convergence(
    data: DigitData,
    pairs: Sequence[tuple[Task, str]],
    implementations: Sequence[str],
    config: TrainingConfig,
    device: torch.device,
    show_progress: bool = True,
) -> list[TrainingRun]:
    """Train every (task, loss) pair once per implementation, all from one initial state per task.

    Checks first that every implementation needed imports, so a missing one fails before any
    training. ``data`` may be on any device; it is moved to ``device``.
    """
    for _, loss in pairs:
        for implementation in implementations:
            loss_function(implementation, loss)
    zero_one_metric()
    data = data.to(device)
    steps_per_run = config.epochs * config.steps_per_epoch(len(data.train_labels))
    runs = []
    with tqdm(
        total=steps_per_run * len(pairs) * len(implementations),
        unit="step",
        disable=not show_progress,
        dynamic_ncols=True,
    ) as progress:
        for task, loss in pairs:
            state = initial_state(task, data.image_size, config.seed)
            for implementation in implementations:
                progress.set_description(f"{task.name}/{loss}/{implementation}")
                runs.append(
                    train(data, task, loss, implementation, config, state, device, progress)
                )
    return runs


def weight_difference(run: TrainingRun, baseline: TrainingRun) -> float:
    """The largest relative error, tensor by tensor, of ``run``'s final weights from ``baseline``'s.

    Each tensor is measured by ``reference.tolerance.relative_error`` (max abs difference over
    that tensor's max abs value).
    """
    return max(
        relative_error(run.final_state[name], baseline.final_state[name])
        for name in baseline.final_state
    )


# --- Results ---------------------------------------------------------------------------------


CSV_NAME = "convergence.csv"
PLOT_NAME = "convergence.png"

# The CSV's columns, in order: the harness's provenance (bench/report.py), then what was trained.
# ``metric`` is one of METRICS; ``step`` (1-based over the whole run) is empty for per-epoch
# metrics.
CSV_COLUMNS = (
    *PROVENANCE_COLUMNS,
    "dataset",
    "image_size",
    "dtype",
    "cpu_threads",
    "task",
    "loss",
    "impl",
    "seed",
    "batch_size",
    "learning_rate",
    "epoch",
    "step",
    "metric",
    "value",
    "unit",
    "note",
)
# Each metric with its unit and what it counts.
METRICS: dict[str, tuple[str, str]] = {
    "train_loss": ("loss", "batch-mean training loss of one step"),
    "epoch_mean_train_loss": ("loss", "training loss of the epoch, averaged over its images"),
    "test_zero_one_loss": ("fraction", "0-1 loss on the test set after the epoch (error rate)"),
    "epoch_seconds": ("s", "seconds of the epoch's training steps, device synchronised"),
}


INTERPRETER_NOTE = "Triton's interpreter (no GPU): its seconds are not kernel speed"


def ran_in_interpreter(implementation: str) -> bool:
    """Whether ``implementation`` runs in Triton's interpreter here (triton without a GPU)."""
    if implementation != "triton":
        return False
    from kernels._common import INTERPRETED

    return INTERPRETED


def results_rows(
    runs: Sequence[TrainingRun], data: DigitData, config: TrainingConfig, device: torch.device
) -> list[dict[str, object]]:
    """The long-format rows of ``runs``: one per step loss and one per epoch metric."""
    height, width = data.image_size
    common = provenance(device) | {
        "dataset": data.name,
        "image_size": f"{height}x{width}",
        "dtype": "float32",
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else "",
        "seed": config.seed,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
    }
    rows: list[dict[str, object]] = []

    def add(run: TrainingRun, epoch: int, step: int | str, metric: str, value: float) -> None:
        rows.append(
            common
            | {"task": run.task, "loss": run.loss, "impl": run.implementation}
            | {"epoch": epoch, "step": step, "metric": metric}
            # 9 significant digits: the step losses (float32) exactly, the rest closely enough.
            | {"value": f"{value:.9g}", "unit": METRICS[metric][0]}
            | {"note": INTERPRETER_NOTE if ran_in_interpreter(run.implementation) else ""}
        )

    for run in runs:
        for step, (epoch, value) in enumerate(
            zip(run.step_epochs, run.step_losses, strict=True), start=1
        ):
            add(run, epoch, step, "train_loss", value)
        for record in run.epochs:
            add(run, record.epoch, "", "epoch_mean_train_loss", record.mean_train_loss)
            add(run, record.epoch, "", "test_zero_one_loss", record.test_zero_one_loss)
            add(run, record.epoch, "", "epoch_seconds", record.seconds)
    return rows


def write_csv(rows: Sequence[dict[str, object]], path: Path) -> None:
    """Write ``rows`` to ``path`` with the columns ``CSV_COLUMNS``, atomically (temp + replace)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue())


# How each implementation is drawn: the curves should lie on top of each other, so the styles
# differ enough for the overlap itself to show.
_STYLES = {
    "torch": {"color": "tab:blue", "linestyle": "-", "linewidth": 2.0, "marker": "o"},
    "reference": {"color": "tab:orange", "linestyle": "--", "linewidth": 1.2, "marker": "s"},
    "triton": {"color": "tab:green", "linestyle": ":", "linewidth": 1.2, "marker": "x"},
}


def load_convergence(csv_path: Path):
    """A convergence CSV as a pandas DataFrame, the provenance columns as text (a commit such
    as '1234567e8901' is not a number)."""
    import pandas as pd

    return pd.read_csv(csv_path, dtype=dict.fromkeys(PROVENANCE_COLUMNS, str))


def plot_convergence(csv_path: Path, png_path: Path) -> None:
    """Plot a convergence CSV: one row of panels per (task, loss), written atomically as PNG.

    Panels: the per-step training loss of each implementation overlaid; the per-step |loss -
    torch's loss| on a log scale beside the fp32 tolerance (exact agreement is stated, since zero
    has no logarithm); the test 0-1 loss per epoch. The title names the data set, device, dtype.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = load_convergence(csv_path)
    pairs = list(dict.fromkeys(zip(frame["task"], frame["loss"], strict=True)))
    figure, axes = plt.subplots(len(pairs), 3, figsize=(16, 3.4 * len(pairs)), squeeze=False)
    for row, (task, loss) in enumerate(pairs):
        subset = frame[(frame["task"] == task) & (frame["loss"] == loss)]
        steps = subset[subset["metric"] == "train_loss"]
        curves = {
            name: group.set_index("step")["value"]
            for name, group in steps.groupby("impl", sort=False)
        }
        pair_title = f"{task} ({TASKS[task].description})\n{loss}"
        loss_axis, difference_axis, error_axis = axes[row]
        for name, curve in curves.items():
            style = _STYLES[name] | {"marker": None}
            loss_axis.plot(curve.index, curve.values, label=name, **style)
        loss_axis.set_yscale("log")
        loss_axis.set_title(f"{pair_title}: training loss")
        loss_axis.set_xlabel("step")
        loss_axis.set_ylabel("loss (batch mean)")
        loss_axis.legend()
        difference_axis.set_title(f"{pair_title}: |loss - torch's loss|")
        difference_axis.set_xlabel("step")
        difference_axis.set_ylabel("absolute difference")
        notes = []
        if "torch" in curves:
            allowed = tolerance(torch.float32) * curves["torch"].abs()
            for name, curve in curves.items():
                if name == "torch":
                    continue
                difference = (curve - curves["torch"]).abs()
                if (difference == 0).all():
                    notes.append(f"{name}: identical to torch at every step")
                    continue
                positive = difference[difference > 0]
                style = _STYLES[name] | {"marker": None, "linestyle": "-", "linewidth": 0.8}
                difference_axis.plot(positive.index, positive.values, label=name, **style)
            difference_axis.plot(
                allowed.index,
                allowed.values,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"fp32 tolerance: {tolerance(torch.float32):g} x torch's loss",
            )
            difference_axis.set_yscale("log")
            difference_axis.legend(fontsize="small")
        else:
            notes.append("torch was not run")
        if notes:
            difference_axis.text(
                0.02, 0.05, "\n".join(notes), transform=difference_axis.transAxes, va="bottom"
            )
        errors = subset[subset["metric"] == "test_zero_one_loss"]
        for name, group in errors.groupby("impl", sort=False):
            error_axis.plot(group["epoch"], group["value"], label=name, **_STYLES[name])
        error_axis.set_title(f"{pair_title}: test 0-1 loss")
        error_axis.set_xlabel("epoch")
        error_axis.set_ylabel("error rate (fraction of labels)")
        error_axis.legend()
    first = frame.iloc[0]
    figure.suptitle(
        f"Digit CNN trained with each loss implementation from the same weights and batches: "
        f"{first['dataset']} ({first['image_size']}), {first['device_name']} "
        f"({first['device']}), {first['dtype']}, batch {first['batch_size']}, "
        f"Adam lr {first['learning_rate']:g}"
    )
    # Fixed margins: tight_layout measures every label and took 5 to 15 s for six rows.
    height = figure.get_figheight()
    figure.subplots_adjust(
        left=0.06, right=0.98, wspace=0.28, hspace=0.7, top=1 - 1.3 / height, bottom=0.5 / height
    )
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=90)
    plt.close(figure)
    write_atomically(png_path, image.getvalue())


def summary_table(runs: Sequence[TrainingRun]) -> str:
    """A terminal table per run: final test error, median epoch seconds, agreement with torch."""
    import pandas as pd

    torch_runs = {(run.task, run.loss): run for run in runs if run.implementation == "torch"}
    lines = []
    for run in runs:
        baseline = torch_runs.get((run.task, run.loss))
        compared = baseline is not None and run is not baseline
        lines.append(
            {
                "task": run.task,
                "loss": run.loss,
                "impl": run.implementation
                + (" (interpreter)" if ran_in_interpreter(run.implementation) else ""),
                "final test 0-1 loss": run.epochs[-1].test_zero_one_loss,
                "median epoch s": sorted(record.seconds for record in run.epochs)[
                    len(run.epochs) // 2
                ],
                "step-loss rel. diff vs torch": (
                    relative_error(
                        torch.tensor(run.step_losses), torch.tensor(baseline.step_losses)
                    )
                    if compared
                    else float("nan")
                ),
                "weight rel. diff vs torch": (
                    weight_difference(run, baseline) if compared else float("nan")
                ),
            }
        )
    return pd.DataFrame(lines).to_string(index=False, float_format=lambda value: f"{value:.3g}")


# --- Command line ----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _names_of(known: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names, each one of ``known``."""

    def names(text: str) -> list[str]:
        parsed = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in parsed if name not in known]
        if unknown or not parsed:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {unknown or text!r}; known: {', '.join(known)}"
            )
        return parsed

    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench convergence",
        description=(
            "Train the article's digit CNN once per loss implementation (same seed, weights and "
            "data order, float32) and write convergence.csv and convergence.png."
        ),
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        help=f"epochs per run (default: {DEFAULT_EPOCHS['digits']} for digits, "
        f"{DEFAULT_EPOCHS['mnist']} for MNIST)",
    )
    for option, metavar, names, what in (
        ("--tasks", "TASK", list(TASKS), "task types"),
        ("--losses", "LOSS", list(LOSSES), "losses (each trains the tasks it fits)"),
        ("--impls", "IMPL", list(IMPLEMENTATIONS), "implementations"),
    ):
        parser.add_argument(
            option,
            nargs="+",
            type=_names_of(names, option),
            metavar=metavar,
            help=f"{what}, of {', '.join(names)}, comma- or space-separated (default: all)",
        )
    parser.add_argument(
        "--data",
        default="digits",
        choices=DATA_SETS,
        help="digits: scikit-learn's 8x8 digits, offline (default); mnist: torchvision's MNIST",
    )
    parser.add_argument("--data-root", type=Path, help="folder holding MNIST/raw (--data mnist)")
    parser.add_argument("--download", action="store_true", help="download MNIST into --data-root")
    parser.add_argument(
        "--results-dir",
        type=Path,
        help="where to write (default: results/<device> in the repository)",
    )
    parser.add_argument(
        "--max-steps", type=_positive_int, help="stop every epoch after this many steps"
    )
    parser.add_argument("--seed", type=int, default=0, help="weights and data order (default 0)")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=DEFAULT_CPU_THREADS,
        help=f"CPU threads when training on the CPU (default {DEFAULT_CPU_THREADS})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line's options: --tasks, --losses and --impls as flat lists of names (all
    when not given), --results-dir as given or ``default_results_folder``'s (None until the
    device is known)."""
    arguments = _parser().parse_args(argv)
    for option, names in (("tasks", TASKS), ("losses", LOSSES), ("impls", IMPLEMENTATIONS)):
        given = getattr(arguments, option)
        chosen = list(names) if given is None else [name for group in given for name in group]
        setattr(arguments, option, list(dict.fromkeys(chosen)))
    return arguments


def default_results_folder(device: torch.device) -> Path:
    """results/<device> of the repository, wherever the command runs from."""
    return REPOSITORY_ROOT / "results" / device_folder(device)


def _load_data(arguments: argparse.Namespace) -> DigitData:
    if arguments.data == "mnist":
        if arguments.data_root is None:
            raise ConvergenceError("--data mnist needs --data-root DIR")
        return load_mnist_data(arguments.data_root, arguments.download)
    if arguments.data_root is not None or arguments.download:
        raise ConvergenceError("--data-root and --download apply to --data mnist only")
    return load_digits_data()


def main(argv: list[str]) -> int:
    """``python -m bench convergence [options]``: train, write the CSV and plot, print a summary.

    Returns 0 on success and 1, after printing why, when the run cannot start (an implementation
    or the data set is missing, or options contradict each other).
    """
    arguments = parse_arguments(argv)
    device = bench_device()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(arguments.threads)
    try:
        return _run(arguments, device)
    finally:
        torch.set_num_threads(threads)


def _run(arguments: argparse.Namespace, device: torch.device) -> int:
    try:
        data = _load_data(arguments)
        epochs = arguments.epochs or DEFAULT_EPOCHS[data.name]
        config = TrainingConfig(
            epochs, seed=arguments.seed, max_steps_per_epoch=arguments.max_steps
        )
        pairs = selected_pairs(arguments.tasks, arguments.losses)
        print(
            f"convergence: {data.description} ({len(data.train_labels)} train, "
            f"{len(data.test_labels)} test images), {epochs} epochs of "
            f"{config.steps_per_epoch(len(data.train_labels))} steps, on {device_name(device)}",
            file=sys.stderr,
        )
        runs = run_convergence(
            data, pairs, arguments.impls, config, device, not arguments.no_progress
        )
    except ConvergenceError as error:
        print(f"convergence: {error}", file=sys.stderr)
        return 1
    results_dir = arguments.results_dir or default_results_folder(device)
    write_csv(results_rows(runs, data, config, device), results_dir / CSV_NAME)
    plot_convergence(results_dir / CSV_NAME, results_dir / PLOT_NAME)
    print(summary_table(runs))
    print(f"wrote {results_dir / CSV_NAME} and {results_dir / PLOT_NAME}")
    return 0
