"""One training epoch of the article's digit CNN per loss implementation: the speed a user feels.

Each case trains the CNN of lossbench.bench.convergence for one epoch of scikit-learn's 8x8
digits (1437 images: 45 Adam steps of batch 32, the whole step: batch gather, forward, loss,
backward, update) with one implementation of one loss, in float32 on the bench device. What is
timed: one epoch, the device synchronised at its end (pytest-benchmark's rounds, each from the
same initial weights and batches; model and optimizer are built outside the timed region).

Before timing, the case trains that epoch untimed (which also warms up) and compares its step
losses with torch's from the same weights and batches: a disagreement beyond the fp32 tolerance
fails the case instead of timing it. Under Triton's interpreter (no GPU) the triton cases skip:
interpreter time is not kernel speed. The session's --impls and --losses select cases here too;
the ``tiny`` preset (CI) trains 4 steps instead of an epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from lossbench.bench.cases import LossFunction
from lossbench.bench.convergence import ConvergenceError
from lossbench.bench.convergence.data import TASKS, DigitData, Task, load_digits_data
from lossbench.bench.convergence.model import build_model_and_optimizer, initial_state
from lossbench.bench.convergence.train import (
    BATCH_SIZE,
    DEFAULT_CPU_THREADS,
    TRAINED_IMPLEMENTATIONS,
    TrainingConfig,
    batch_loss,
    exact_float32,
    train_epoch,
    trained_implementation,
)
from lossbench.bench.measure import synchronize
from lossbench.bench.session import BenchSession
from lossbench.reference.tolerance import relative_error, tolerance

SEED = 0
TINY_PRESET_STEPS = 4
ROUNDS = {"cpu": 3, "cuda": 10}

PAIRS = [(task, loss) for task in TASKS for loss in TASKS[task].losses]


@pytest.fixture(scope="module")
def digits(bench_device: torch.device) -> DigitData:
    return load_digits_data().to(bench_device)


@pytest.fixture(scope="module", autouse=True)
def _cpu_threads(bench_device: torch.device) -> Iterator[None]:
    """Train on the CPU with the thread count of the convergence command (it says why)."""
    threads = torch.get_num_threads()
    if bench_device.type == "cpu":
        torch.set_num_threads(DEFAULT_CPU_THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torch_epoch_losses() -> dict[tuple[str, str, int], torch.Tensor]:
    """Torch's step losses per (task, loss, steps), filled on first use: the agreement baseline."""
    return {}


def _epoch(
    data: DigitData,
    task: Task,
    loss: str,
    compute_loss: LossFunction,
    state: dict[str, torch.Tensor],
    order: torch.Tensor,
    steps: int,
    device: torch.device,
) -> Callable[[], torch.Tensor]:
    """A fresh model from ``state`` and its Adam optimizer, and the call training one epoch with
    ``compute_loss``, an implementation of ``loss``."""
    model, optimizer = build_model_and_optimizer(task, data.image_size, state, device)
    targets = task.targets(data.train_labels)

    def train_one_epoch() -> torch.Tensor:
        losses = train_epoch(
            model,
            optimizer,
            batch_loss(compute_loss, loss),
            data.train_images,
            targets,
            order,
            BATCH_SIZE,
            steps,
        )
        synchronize(device)
        return losses

    return train_one_epoch


@pytest.mark.parametrize("impl", TRAINED_IMPLEMENTATIONS)
@pytest.mark.parametrize(("task_name", "loss"), PAIRS)
def test_training_epoch(
    benchmark,
    bench_session: BenchSession,
    bench_device: torch.device,
    digits: DigitData,
    torch_epoch_losses: dict[tuple[str, str, int], torch.Tensor],
    task_name: str,
    loss: str,
    impl: str,
) -> None:
    if impl not in bench_session.impls or loss not in bench_session.losses:
        pytest.skip("not selected by --impls / --losses")
    try:
        implementation = trained_implementation(impl, loss)
    except ConvergenceError as error:
        pytest.skip(str(error))
    if implementation.interpreted:
        pytest.skip("interpreter time is not kernel speed")
    compute_loss = implementation.function
    task = TASKS[task_name]
    n_train = len(digits.train_labels)
    steps = TrainingConfig(
        epochs=1,
        max_steps_per_epoch=TINY_PRESET_STEPS if bench_session.preset.name == "tiny" else None,
    ).steps_per_epoch(n_train)
    state = initial_state(task, digits.image_size, SEED)
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(SEED))
    order = order.to(bench_device)

    def epoch_of(function: LossFunction) -> Callable[[], torch.Tensor]:
        return _epoch(digits, task, loss, function, state, order, steps, bench_device)

    with exact_float32():
        key = (task_name, loss, steps)
        if key not in torch_epoch_losses:
            torch_function = trained_implementation("torch", loss).function
            torch_epoch_losses[key] = epoch_of(torch_function)().cpu()
        losses = epoch_of(compute_loss)().cpu()
        error = relative_error(losses, torch_epoch_losses[key])
        allowed = tolerance(torch.float32)
        benchmark.extra_info.update(
            dataset=digits.name,
            image_size="x".join(map(str, digits.image_size)),
            device=str(bench_device),
            cpu_threads=torch.get_num_threads() if bench_device.type == "cpu" else None,
            task=task_name,
            loss=loss,
            impl=impl,
            steps=steps,
            images=min(n_train, steps * BATCH_SIZE),
            batch_size=BATCH_SIZE,
            step_loss_rel_error_vs_torch=error,
            tolerance=allowed,
        )
        assert error <= allowed, (
            f"{impl} {task_name}/{loss}: step losses differ from torch's by {error:.3g} "
            f"(relative), over the fp32 tolerance {allowed:g}; not timed"
        )

        def fresh_epoch() -> tuple[tuple[Callable[[], torch.Tensor]], dict]:
            return (epoch_of(compute_loss),), {}

        def run(train_one_epoch: Callable[[], torch.Tensor]) -> torch.Tensor:
            return train_one_epoch()

        benchmark.pedantic(
            run,
            setup=fresh_epoch,
            rounds=ROUNDS[bench_device.type],
            iterations=1,
        )
