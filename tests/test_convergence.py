"""The convergence check: the digit CNN trains alike with every loss implementation.

Training runs where the kernels run (the GPU if there is one, else the CPU) and is short, a few
Adam steps on the real 8x8 digits, because on the CPU Triton's kernels run in the interpreter.
The seed of the weights and the data order is drawn from torch's RNG, which tests/conftest.py
seeds per test: fresh each run, replayable with LOSSBENCH_SEED.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.nn import functional

from lossbench.bench.cases import LossFunction
from lossbench.bench.cli import main
from lossbench.bench.convergence import ConvergenceError
from lossbench.bench.convergence.data import (
    TASKS,
    DigitData,
    Task,
    load_digits_data,
    load_mnist_data,
)
from lossbench.bench.convergence.model import (
    LEARNING_RATE,
    DigitCNN,
    build_model_and_optimizer,
    initial_state,
)
from lossbench.bench.convergence.results import (
    COLUMNS,
    CONVERGENCE_CSV,
    CONVERGENCE_PNG,
    INTERPRETER_NOTE,
)
from lossbench.bench.convergence.train import (
    BATCH_SIZE,
    DEFAULT_CPU_THREADS,
    TRAINED_IMPLEMENTATIONS,
    TrainingConfig,
    batch_loss,
    exact_float32,
    train,
    train_epoch,
    trained_implementation,
)
from lossbench.bench.provenance import bench_device, device_folder, results_folder
from lossbench.reference.tolerance import assert_close, relative_error, tolerance

FP32_TOLERANCE = tolerance(torch.float32)
DEVICE = bench_device()

# Four Adam steps of the article's batch 32: enough for weight differences to feed back into the
# forward pass, few enough for the interpreter (each step launches the loss kernels once).
TRAINING_STEPS = 4

PAIRS = [(task, loss) for task in TASKS for loss in TASKS[task].losses]


@pytest.fixture(scope="module")
def digits() -> DigitData:
    return load_digits_data().to(DEVICE)


def _fresh_seed() -> int:
    return int(torch.randint(0, 2**31 - 1, ()))


def _train_recording(
    data: DigitData,
    task: Task,
    loss: str,
    compute_loss: LossFunction,
    state: dict[str, torch.Tensor],
    order: torch.Tensor,
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]], dict]:
    """Train TRAINING_STEPS steps through ``train_epoch`` with ``compute_loss``, an implementation
    of ``loss``, as ``train`` does.

    Returns the step losses, each step's gradients, each step's Adam denominator sqrt(v_hat) +
    eps (v_hat: the bias-corrected second moment), and the final weights.
    """
    model, optimizer = build_model_and_optimizer(task, data.image_size, state, DEVICE)
    beta2, eps = optimizer.defaults["betas"][1], optimizer.defaults["eps"]
    named = list(model.named_parameters())
    gradients: list[dict[str, torch.Tensor]] = []
    denominators: list[dict[str, torch.Tensor]] = []

    def record() -> None:
        step = len(gradients) + 1
        gradients.append({name: p.grad.clone() for name, p in named})
        denominators.append(
            {
                name: (optimizer.state[p]["exp_avg_sq"] / (1 - beta2**step)).sqrt() + eps
                for name, p in named
            }
        )

    with exact_float32():
        losses = train_epoch(
            model,
            optimizer,
            batch_loss(compute_loss, loss),
            data.train_images,
            task.targets(data.train_labels),
            order,
            BATCH_SIZE,
            TRAINING_STEPS,
            record,
        )
    return losses, gradients, denominators, model.state_dict()


def _layer(parameter: str) -> str:
    """The layer a parameter belongs to: 'fc2' for 'fc2.bias'."""
    return parameter.rsplit(".", 1)[0]


def _gradient_scales(gradients: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Per step, per layer: the largest |gradient| of the layer's weight and bias, this step or
    any before. Gradients are compared in this scale, not tensor by tensor and step by step.

    A gradient is a sum over the batch, and its rounding error is set by the size of the terms,
    not by the sum, which can cancel far below them: a bias gradient (fc2.bias of the binary
    task: 7e-4 beside 1.5e-2 for fc2.weight, measured, so 1.5e-5 of itself yet 7e-7 of the
    layer), or a whole layer in one step (fc2 of the binary task fell from 4.8e-2 in step 1 to
    8e-3 in step 2, where its difference from torch, 1.1e-5 of that step, was 2e-6 of step 1's).
    """
    scales: list[dict[str, torch.Tensor]] = []
    for gradient in gradients:
        current: dict[str, torch.Tensor] = {}
        for name, tensor in gradient.items():
            layer = _layer(name)
            earlier = scales[-1][layer] if scales else torch.zeros((), device=tensor.device)
            current[layer] = torch.maximum(current.get(layer, earlier), tensor.abs().max())
        scales.append(current)
    return scales


def _assert_gradients_close(
    gradients: list[dict[str, torch.Tensor]],
    expected: list[dict[str, torch.Tensor]],
    scales: list[dict[str, torch.Tensor]],
    what: str,
) -> None:
    """Every gradient of every step within the fp32 tolerance of its layer's scale."""
    for step, (gradient, expected_gradient, scale) in enumerate(
        zip(gradients, expected, scales, strict=True), start=1
    ):
        for name, expected_tensor in expected_gradient.items():
            error = (gradient[name] - expected_tensor).abs().max() / scale[_layer(name)]
            assert error <= FP32_TOLERANCE, (
                f"{what}: step {step} {name} gradient differs from torch's by {error:.3g} of "
                f"its layer's gradient scale, over the fp32 tolerance {FP32_TOLERANCE:g}"
            )


def _assert_weights_close(
    weights: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    scales: list[dict[str, torch.Tensor]],
    denominators: list[dict[str, torch.Tensor]],
    what: str,
) -> None:
    """Weights agree within the fp32 tolerance, carried through Adam element by element.

    A plain ``relative_error <= 1e-5`` on the weights is not a fair test after Adam steps: Adam
    divides each gradient element by sqrt(v_hat) + eps, so an element whose gradient is near zero
    (2e-9 beside a largest of 3e-2, measured) turns a rounding-level gradient difference into a
    weight difference of a sizeable fraction of the learning rate. Measured, torch against the
    reference after 4 steps: 1.1e-5 to 7.2e-5 of max|w| over 6 seeds, for every task and loss,
    while the gradients agree within 1e-6. So each element may differ by

        tol * max|w| + lr * sum_t (1 + sqrt(t)) * tol * G_t / (sqrt(v_hat_t) + eps),

    G_t the layer's gradient scale in step t (``_gradient_scales``): the first-order change of
    Adam's updates when every gradient agrees within tol = 1e-5 of G_t, which the caller asserts.
    The update m_hat / (sqrt(v_hat) + eps) moves by 1 / (sqrt(v_hat) + eps) per unit of m_hat,
    and through sqrt(v_hat), which moves by at most as much as the gradients (Cauchy-Schwarz), by
    |m_hat| / (sqrt(v_hat) + eps)^2 <= sqrt(t) / (sqrt(v_hat) + eps), as |m_hat| <= sqrt(t)
    sqrt(v_hat) in Adam's first steps. For an element with an ordinary gradient the second term
    is far below the first, so there the test is the fp32 tolerance itself; only elements with
    near-zero gradients get Adam's slack. Measured, the differences use at most 2 % of this.
    """
    for name, expected_tensor in expected.items():
        allowed = FP32_TOLERANCE * expected_tensor.abs().max()
        for step, (scale, denominator) in enumerate(zip(scales, denominators, strict=True), 1):
            sensitivity = (1 + step**0.5) / denominator[name]
            allowed = allowed + (LEARNING_RATE * sensitivity * FP32_TOLERANCE * scale[_layer(name)])
        difference = (weights[name] - expected_tensor).abs()
        worst = int((difference / allowed).argmax())
        assert (difference <= allowed).all(), (
            f"{what}: {name} element {worst} differs by {difference.flatten()[worst]:.3g}, "
            f"allowed {allowed.flatten()[worst]:.3g} (plain relative error "
            f"{relative_error(weights[name], expected_tensor):.3g})"
        )


def _assert_trains_like_torch(
    data: DigitData,
    task_name: str,
    loss: str,
    compute_loss: LossFunction,
    what: str,
) -> None:
    """Same weights, same batches: step losses, the first gradients and the final weights agree."""
    task = TASKS[task_name]
    seed = _fresh_seed()
    what = f"{what} {task_name}/{loss} (seed {seed})"
    state = initial_state(task, data.image_size, seed)
    order = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(seed))
    order = order.to(DEVICE)
    torch_losses, torch_gradients, torch_denominators, torch_weights = _train_recording(
        data, task, loss, trained_implementation("torch", loss).function, state, order
    )
    losses, gradients, _, weights = _train_recording(data, task, loss, compute_loss, state, order)
    assert_close(losses, torch_losses, torch.float32, f"{what} step losses")
    scales = _gradient_scales(torch_gradients)
    # Only the first step's gradients: there the weights are identical, so any difference is the
    # loss's. From step 2 on the weights differ within Adam's slack (see _assert_weights_close),
    # and so do the gradients, by more than the loss alone would explain (2e-5 of a layer's
    # scale, seen); the step losses and the final weights cover those steps.
    _assert_gradients_close(gradients[:1], torch_gradients[:1], scales[:1], what)
    _assert_weights_close(weights, torch_weights, scales, torch_denominators, what)
    assert any(
        relative_error(weights[name], state[name]) > 100 * FP32_TOLERANCE for name in state
    ), f"{what}: the weights did not move, so agreeing with torch proves nothing"


@pytest.mark.parametrize("implementation", ["reference", "triton"])
@pytest.mark.parametrize(("task_name", "loss"), PAIRS)
def test_implementation_trains_like_torch(
    digits: DigitData, task_name: str, loss: str, implementation: str
) -> None:
    compute_loss = trained_implementation(implementation, loss).function
    _assert_trains_like_torch(digits, task_name, loss, compute_loss, implementation)


def test_a_gradient_off_by_1e_4_is_caught(digits: DigitData) -> None:
    """The comparison can fail: the right loss value with a gradient 1e-4 too large."""

    def cross_entropy_with_wrong_gradient(
        logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        logits = logits.view_as(logits)
        logits.register_hook(lambda gradient: gradient * (1 + 1e-4))
        return functional.cross_entropy(logits, labels)

    with pytest.raises(AssertionError, match=r"step 1 .* gradient differs"):
        _assert_trains_like_torch(
            digits, "multiclass", "cross_entropy", cross_entropy_with_wrong_gradient, "wrong"
        )


def test_training_is_deterministic(digits: DigitData) -> None:
    """Two torch runs from one seed are identical, so differences come from the loss alone."""
    config = TrainingConfig(epochs=1, seed=_fresh_seed(), max_steps_per_epoch=3)
    task = TASKS["multiclass"]
    state = initial_state(task, digits.image_size, config.seed)
    runs = [train(digits, task, "cross_entropy", "torch", config, state, DEVICE) for _ in range(2)]
    assert runs[0].step_losses == runs[1].step_losses
    for name, tensor in runs[0].final_state.items():
        assert torch.equal(tensor, runs[1].final_state[name]), name


def test_digits_are_real_shipped_images() -> None:
    """1797 real 8x8 digits in [0, 1], split 1437 / 360, every class in both sets."""
    digits = load_digits_data()
    assert digits.name == "digits"
    assert digits.train_images.shape == (1437, 1, 8, 8)
    assert digits.test_images.shape == (360, 1, 8, 8)
    for images, labels in (
        (digits.train_images, digits.train_labels),
        (digits.test_images, digits.test_labels),
    ):
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert labels.shape == images.shape[:1]
        assert images.min() == 0 and images.max() == 1
        assert torch.equal(labels.unique(), torch.arange(10))
    # Handwriting, not noise or a constant: the mean image of 0s and 1s differ in the middle,
    # where a 0 has its hole and a 1 its stroke.
    zeros = digits.train_images[digits.train_labels == 0].mean(0)[0, 3:5, 3:5].mean()
    ones = digits.train_images[digits.train_labels == 1].mean(0)[0, 3:5, 3:5].mean()
    assert ones > zeros + 0.3
    # The split is fixed: loading again gives the same images.
    assert torch.equal(load_digits_data().test_labels, digits.test_labels)
    assert torch.equal(load_digits_data().test_images, digits.test_images)


def test_mnist_without_files_names_the_root(tmp_path) -> None:
    with pytest.raises(ConvergenceError, match="--download"):
        load_mnist_data(tmp_path, download=False)


def _write_idx(path, array: torch.Tensor) -> None:
    """An MNIST file in the IDX format: magic (unsigned bytes, ndim), big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.dim()])
    header += b"".join(size.to_bytes(4, "big") for size in array.shape)
    path.write_bytes(header + array.numpy().tobytes())


def test_mnist_loader_reads_torchvision_files(tmp_path) -> None:
    """MNIST is not shipped: files in its IDX format (random pixels) go through torchvision."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    sizes = {"train": 6, "t10k": 4}
    pixels = {
        split: torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8) for split, n in sizes.items()
    }
    labels = {split: torch.randint(0, 10, (n,), dtype=torch.uint8) for split, n in sizes.items()}
    for split in sizes:
        _write_idx(raw / f"{split}-images-idx3-ubyte", pixels[split])
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])
    mnist = load_mnist_data(tmp_path)
    assert mnist.name == "mnist" and mnist.image_size == (28, 28)
    assert mnist.train_images.shape == (6, 1, 28, 28) and mnist.test_images.shape == (4, 1, 28, 28)
    assert mnist.train_images.dtype == torch.float32 and mnist.train_labels.dtype == torch.int64
    assert torch.equal(mnist.train_images[:, 0], pixels["train"].float() / 255)
    assert torch.equal(mnist.test_labels, labels["t10k"].long())


@pytest.mark.parametrize(
    ("height", "width", "fc1_inputs"), [(8, 8, 16 * 4 * 4), (28, 28, 16 * 14 * 14)]
)
@pytest.mark.parametrize("task_name", list(TASKS))
def test_cnn_shapes(height: int, width: int, fc1_inputs: int, task_name: str) -> None:
    task = TASKS[task_name]
    model = DigitCNN(height, width, task.n_outputs)
    assert model.fc1.in_features == fc1_inputs
    assert model(torch.rand(5, 1, height, width)).shape == (5, task.n_outputs)


def test_task_targets() -> None:
    digits = torch.arange(10)
    assert torch.equal(TASKS["multiclass"].targets(digits), digits)
    five_or_more = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1.0])
    assert torch.equal(TASKS["binary"].targets(digits), five_or_more.unsqueeze(1))
    even = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0, 1, 0.0])
    prime = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1, 0, 0.0])
    expected = torch.stack((even, five_or_more, prime), dim=1)
    assert torch.equal(TASKS["multilabel"].targets(digits), expected)


def test_missing_implementation_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lossbench.kernels.softmax", None)
    with pytest.raises(ConvergenceError, match=r"triton .*kernels\.softmax"):
        trained_implementation("triton", "cross_entropy")
    assert main(["convergence", "--impls", "triton", "--no-progress"]) == 1


def test_cli_refuses_an_unknown_implementation(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["convergence", "--impls", "torch,jax"])
    assert "unknown --impls ['jax']" in capsys.readouterr().err


def test_default_results_folder_is_the_repositorys(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    repository = Path(__file__).resolve().parent.parent
    assert results_folder(DEVICE) == repository / "results" / device_folder(DEVICE)


def test_tiny_run_writes_csv_and_plot(tmp_path) -> None:
    """`lossbench convergence` end to end: 2 epochs of 2 steps, every implementation."""
    argv = ["--epochs", "2", "--max-steps", "2", "--results-dir", str(tmp_path)]
    argv += ["--no-progress", "--seed", str(_fresh_seed())]
    assert main(["convergence", *argv]) == 0
    frame = pd.read_csv(tmp_path / CONVERGENCE_CSV)
    assert list(frame.columns) == list(COLUMNS)
    assert (frame["dataset"] == "digits").all() and (frame["image_size"] == "8x8").all()
    assert (frame["device"] == device_folder(DEVICE)).all()
    if DEVICE.type == "cpu":
        assert (frame["cpu_threads"] == DEFAULT_CPU_THREADS).all()
    runs = frame.groupby(["task", "loss", "impl"])
    assert len(runs) == len(PAIRS) * len(TRAINED_IMPLEMENTATIONS)
    for (_, _, impl), run in runs:
        counts = run["metric"].value_counts()
        assert counts["train_loss"] == 4
        for metric in ("epoch_mean_train_loss", "test_zero_one_loss", "epoch_seconds"):
            assert counts[metric] == 2
        assert run["step"].dropna().tolist() == [1, 2, 3, 4]
        interpreted = trained_implementation(impl, "cross_entropy").interpreted
        assert (run["note"] == INTERPRETER_NOTE).all() == interpreted
        assert run["note"].isna().all() != interpreted
    assert frame["value"].notna().all()
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"
    png = (tmp_path / CONVERGENCE_PNG).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_a_shorter_run_never_silently_replaces_a_fuller_one(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    one_run = ["--tasks", "binary", "--losses", "binary_cross_entropy_with_logits"]
    one_run += ["--impls", "torch", "--results-dir", str(tmp_path), "--no-progress"]
    assert main(["convergence", *one_run, "--epochs", "2", "--max-steps", "2"]) == 0
    written = (tmp_path / CONVERGENCE_CSV).read_bytes()
    capsys.readouterr()
    assert main(["convergence", *one_run, "--epochs", "1", "--max-steps", "2"]) == 1
    assert "holds a fuller run than this one would write (2 epochs" in capsys.readouterr().err
    assert (tmp_path / CONVERGENCE_CSV).read_bytes() == written
    assert main(["convergence", *one_run, "--epochs", "1", "--max-steps", "2", "--overwrite"]) == 0
    assert (tmp_path / CONVERGENCE_CSV).read_bytes() != written
