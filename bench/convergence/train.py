"""Training and evaluation: one implementation of one loss trains the CNN from a given state.

Per step ``train`` records the training loss; per epoch the mean training loss, the test 0-1 loss
(the article's error rate, ``lossbench.reference.zero_one_loss``) and the seconds the epoch's
training took (device synchronised, evaluation excluded).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from lossbench.bench.cases import LOSSES, LossFunction
from lossbench.bench.convergence import ConvergenceError
from lossbench.bench.convergence.data import TASKS, DigitData, Task
from lossbench.bench.convergence.model import (
    LEARNING_RATE,
    DigitCNN,
    build_model_and_optimizer,
    initial_state,
)
from lossbench.bench.implementations import Implementation, UnavailableError, load_implementation
from lossbench.bench.measure import synchronize
from lossbench.reference.tolerance import relative_error
from lossbench.reference.zero_one import zero_one_loss

# The article's batch size.
BATCH_SIZE = 32

# The implementations a run trains: the peers without a training-step meaning here (compile,
# liger) are the harness's business.
TRAINED_IMPLEMENTATIONS = ("torch", "reference", "triton")

# Epochs of the default run. Digits: 45 steps an epoch, about 0.2 s per epoch for torch on one
# CPU thread, seconds for triton in the interpreter. MNIST: 1875 steps an epoch, a few seconds on
# a GPU.
DEFAULT_EPOCHS = {"digits": 10, "mnist": 3}

# CPU threads for training on the CPU: a batch of 32 small images is too little work to split,
# and on a shared machine OpenMP's waiting threads made an epoch 10-100x slower with 2 than with 1
# (measured on 2 loaded cores: 3 to 27 s against 0.22 s).
DEFAULT_CPU_THREADS = 1

# Test images per forward pass in evaluation: bounds the activations of MNIST's 10000 test images.
EVALUATION_CHUNK = 1000


def trained_implementation(implementation: str, loss: str) -> Implementation:
    """``implementation`` of ``loss`` as the harness runs it (lossbench.bench.implementations).

    Reduction 'mean', focal losses with the harness's options (alpha 0.25, gamma 2); the torch
    softmax focal loss is the harness's plain-torch one. Raises ``ValueError`` for an unknown
    name and ``ConvergenceError`` when the implementation cannot be imported.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {list(LOSSES)}")
    if implementation not in TRAINED_IMPLEMENTATIONS:
        raise ValueError(
            f"unknown implementation {implementation!r}; known: {TRAINED_IMPLEMENTATIONS}"
        )
    try:
        return load_implementation(loss, implementation)
    except UnavailableError as error:
        raise ConvergenceError(
            f"the {implementation} implementation of {loss} is unavailable: {error}"
        ) from error


# The training loss of one batch: (model, images, targets) -> the batch-mean loss.
BatchLoss = Callable[[DigitCNN, torch.Tensor, torch.Tensor], torch.Tensor]


def batch_loss(function: LossFunction, loss: str) -> BatchLoss:
    """``function`` (an implementation of ``loss``, as the harness runs it) as a batch's loss.

    A loss of logits takes the CNN's output. The linear cross-entropy takes the CNN's hidden
    features and its last layer's weight and bias instead: the layer and the loss fused, the
    same parameters trained.
    """
    if LOSSES[loss].family == "linear":

        def fused(model: DigitCNN, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            last = model.fc2
            return function(model.features(images), last.weight, targets, linear_bias=last.bias)

        return fused

    def of_logits(model: DigitCNN, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return function(model(images), targets)

    return of_logits


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
    # Whether it ran in Triton's interpreter (no GPU): its seconds are then no kernel speed.
    interpreted: bool
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
    model: DigitCNN,
    optimizer: torch.optim.Optimizer,
    compute_loss: BatchLoss,
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
        loss = compute_loss(model, images[batch], targets[batch])
        loss.backward()
        optimizer.step()
        step_losses.append(loss.detach())
        if on_step is not None:
            on_step()
    return torch.stack(step_losses)


@torch.no_grad()
def evaluate_error(model: DigitCNN, images: torch.Tensor, targets: torch.Tensor) -> float:
    """The article's 0-1 loss of ``model`` on the test set: the fraction of wrong labels.

    Wrong digits for multi-class, wrong 0/1 labels for binary and multi-label (each of the three
    labels counts once).
    """
    model.eval()
    logits = torch.cat([model(chunk) for chunk in images.split(EVALUATION_CHUNK)])
    return float(zero_one_loss(logits, targets))


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
    trained = trained_implementation(implementation, loss)
    model, optimizer = build_model_and_optimizer(
        task, data.image_size, state, device, config.learning_rate
    )
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
    run = TrainingRun(task.name, loss, implementation, trained.interpreted, [], [], [], {})
    with exact_float32():
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(n_train, generator=order_generator).to(device)
            synchronize(device)
            start = time.perf_counter()
            losses = train_epoch(
                model,
                optimizer,
                batch_loss(trained.function, loss),
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
            error = evaluate_error(model, data.test_images, test_targets)
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
            trained_implementation(implementation, loss)
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
