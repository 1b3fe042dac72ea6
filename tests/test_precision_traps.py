"""Precision traps that peers' losses fell into, each a named test of our kernels.

Every comparison is against the float64 oracle (reference/) by ``assert_close``, normwise and
elementwise, on inputs built so that the trap is set (each test checks that it is):

- Liger-Kernel PR #1329: p_y -> 1 in bf16. softmax(x_y) = 0.999 rounded to bf16 before 1 was
  subtracted left the true-class gradient -0.001 wrong by up to 100 %.
- pytorch #85791: fp16 cross-entropy over a batch returned inf, the sum of per-row losses
  overflowing 65504 while their mean is representable. Here with logits near fp16's maximum.
- pytorch #111484: wrong losses past 2^31 elements (32-bit indexing); GPU only.
- bf16 label smoothing at 131072 classes: the smoothing term sums 131072 log-probabilities, and
  each gradient entry p_j - eps/C cancels for a vocabulary that wide.
"""

from __future__ import annotations

import math

import pytest
import torch

import lossbench.kernels.sigmoid as fused_sigmoid
import lossbench.kernels.softmax as fused_softmax
from lossbench.kernels._common import KERNEL_DEVICE
from lossbench.reference import sigmoid as reference_sigmoid
from lossbench.reference import softmax as reference_softmax
from lossbench.reference.tolerance import TOLERANCE, assert_close, elementwise_error

from .helpers import assert_matches_float64, loss_and_gradients

# The interpreter evaluates masked lanes too (-inf logits), and numpy warns about the nan there.
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.usefixtures("poisoned_allocations"),
]

DEVICE = KERNEL_DEVICE
FP16_MAX = torch.finfo(torch.float16).max  # 65504


# --- Liger-Kernel PR #1329: the true-class gradient at p_y = 0.999, bf16 -------------------------


# 1000 classes: the fused path (rows in registers); 32000 (the vocabulary of Liger's measurement):
# the chunked one. Both form p_y - 1 from expm1(log p_y), never from a rounded p_y.
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("n_classes", [1000, 32000])
def test_true_class_gradient_near_p_one_bf16(n_classes: int, reduction: str) -> None:
    n_rows = 4
    target = torch.randint(0, n_classes, (n_rows,), device=DEVICE)
    rows = torch.arange(n_rows, device=DEVICE)
    # p_y = e^a / (e^a + C - 1) = 0.999 at a = log(999 (C - 1)); off-target logits near 0.
    logits = 0.05 * torch.randn(n_rows, n_classes, device=DEVICE)
    logits[rows, target] = math.log(999 * (n_classes - 1))
    logits = logits.to(torch.bfloat16)
    p_y = torch.softmax(logits.double(), dim=1)[rows, target]
    assert ((p_y > 0.998) & (p_y < 0.9995)).all(), "the trap is p_y ~ 0.999"

    loss, grad, _, upstream = loss_and_gradients(
        fused_softmax.cross_entropy, logits, target, reduction=reduction
    )
    expected, expected_grad, _, _ = loss_and_gradients(
        reference_softmax.cross_entropy,
        logits.double(),
        target,
        upstream.double(),
        reduction=reduction,
    )
    assert_close(loss, expected, torch.bfloat16, "loss")
    assert_close(grad, expected_grad, torch.bfloat16, "input gradient")
    # The true-class entries, about -0.001 x upstream / N, each to bf16's relative precision.
    true_class, expected_true_class = grad[rows, target].double(), expected_grad[rows, target]
    rtol = TOLERANCE[torch.bfloat16].rtol
    assert ((true_class - expected_true_class).abs() <= rtol * expected_true_class.abs()).all()

    # The trap's teeth: the same entries formed as Liger-Kernel did before that PR, from
    # softmax(x_y) rounded to bf16 (0.999 becomes 0.998 or 1.0), fail this check.
    scale = expected_true_class / (p_y - 1)
    rounded_p_y = p_y.to(torch.bfloat16).double()
    assert elementwise_error((rounded_p_y - 1) * scale, expected_true_class, torch.bfloat16) > 10


# --- pytorch #85791: fp16 logits near 65504, a sum of losses beyond it ------------------------

FP16_ROWS, FP16_CLASSES = 8, 12


def _logits_and_targets_near_fp16_max() -> tuple[torch.Tensor, torch.Tensor]:
    """(8, 12) fp16 logits in [16384, 65504] with 65504 in class 0, and targets of other classes
    whose logits lie in [16384, 32768]: every row's loss is 32736 to 49120 (representable), and
    eight of them sum to more than 4 x 65504."""
    logits = 16384 + (FP16_MAX - 16384) * torch.rand(FP16_ROWS, FP16_CLASSES, device=DEVICE)
    logits[:, 0] = FP16_MAX
    target = torch.randint(1, FP16_CLASSES, (FP16_ROWS,), device=DEVICE)
    rows = torch.arange(FP16_ROWS, device=DEVICE)
    logits[rows, target] = 16384 + 16384 * torch.rand(FP16_ROWS, device=DEVICE)
    return logits.to(torch.float16), target


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize(
    ("loss", "options"),
    [
        ("cross_entropy", {}),
        ("cross_entropy", {"label_smoothing": 0.1}),
        ("softmax_focal_loss", {"gamma": 2.0}),
    ],
    ids=["ce", "ce-label-smoothing", "focal"],
)
def test_fp16_softmax_logits_near_65504(loss: str, options: dict, reduction: str) -> None:
    logits, target = _logits_and_targets_near_fp16_max()
    total = reference_softmax.cross_entropy(logits.double(), target, reduction="sum")
    assert total > FP16_MAX, "the trap: the losses' sum overflows fp16"
    assert_matches_float64(
        getattr(fused_softmax, loss),
        getattr(reference_softmax, loss),
        logits,
        target,
        reduction=reduction,
        **options,
    )


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("loss", ["binary_cross_entropy_with_logits", "sigmoid_focal_loss"])
def test_fp16_sigmoid_logits_near_65504(loss: str, reduction: str) -> None:
    sign = torch.randint(0, 2, (FP16_ROWS, FP16_CLASSES), device=DEVICE) * 2.0 - 1.0
    magnitude = 16384 + (FP16_MAX - 16384) * torch.rand(FP16_ROWS, FP16_CLASSES, device=DEVICE)
    logits = (sign * magnitude).to(torch.float16)
    target = torch.randint(0, 2, logits.shape, device=DEVICE).to(torch.float16)
    # Element (0, 0) costs softplus(65504) = 65504 exactly, the largest fp16 value: with the
    # other 95 losses (about half of them 16384 or more) the sum is far beyond it.
    logits[0, 0], target[0, 0] = -FP16_MAX, 1.0
    total = reference_sigmoid.binary_cross_entropy_with_logits(
        logits.double(), target.double(), reduction="sum"
    )
    assert total > FP16_MAX, "the trap: the losses' sum overflows fp16"
    # The target gradient is -x per element: under 'none', times an upstream gradient above 1, it
    # overflows fp16 in torch too. Under 'mean' it is divided by the 96 elements.
    assert_matches_float64(
        getattr(fused_sigmoid, loss),
        getattr(reference_sigmoid, loss),
        logits,
        target,
        target_grad=reduction == "mean",
        reduction=reduction,
    )


# --- bf16 label smoothing at 131072 classes ------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_bf16_label_smoothing_131072_classes(reduction: str) -> None:
    # 131072 = 2^17 classes: the chunked path, 16 chunks of 8192; three rows keep the interpreter
    # to a second or two. Each off-target entry is p_j ((1 - eps) w_y + eps W / C) - eps w_j / C
    # (W = sum of the weights): with logits of unit spread p_j ~ 1/C, so across 131072 classes
    # many entries are a near-cancellation of two terms of size ~eps / C ~ 8e-7.
    n_rows, n_classes = 3, 131072
    logits = torch.randn(n_rows, n_classes, device=DEVICE).to(torch.bfloat16)
    target = torch.randint(0, n_classes, (n_rows,), device=DEVICE)
    weight = (0.5 + torch.rand(n_classes, device=DEVICE)).to(torch.bfloat16)
    assert_matches_float64(
        fused_softmax.cross_entropy,
        reference_softmax.cross_entropy,
        logits,
        target,
        weight=weight,
        label_smoothing=0.1,
        reduction=reduction,
    )


# --- pytorch #111484: past 2^31 (and 2^32) elements, fp16, reduction='none' ----------------------


def _rows_to_check(n_rows: int, n_classes: int) -> torch.Tensor:
    """The first row, the rows holding elements 2^31 and 2^32 (and the next ones), the last."""
    crossing = [2**31 // n_classes, 2**32 // n_classes]
    rows = {0, n_rows - 1, *crossing, *(row + 1 for row in crossing)}
    return torch.tensor(sorted(row for row in rows if row < n_rows), device=DEVICE)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "loss", ["cross_entropy-16384", "cross_entropy-50257", "binary_cross_entropy_with_logits"]
)
def test_more_than_2_32_elements_fp16_none(loss: str) -> None:
    # #111484: fp16, reduction='none', an input past 2^32 elements (so past 2^31 as well): rows
    # beyond the wrap got wrong losses. 16384 classes: the fused path; 50257: the chunked one.
    # Memory: 16 GiB for cross-entropy (fp16 logits and gradient), 36 GiB for BCE (fp16
    # logits, loss, upstream and gradient, uint8 targets).
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip(f"needs about 40 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    name, _, classes = loss.partition("-")
    n_classes = int(classes) if classes else 1000
    n_rows = 2**32 // n_classes + 2
    logits = torch.randn(n_rows, n_classes, device=DEVICE, dtype=torch.float16)
    assert logits.numel() > 2**32
    if name == "cross_entropy":
        target = torch.randint(0, n_classes, (n_rows,), device=DEVICE)
        function, oracle = fused_softmax.cross_entropy, reference_softmax.cross_entropy
    else:
        target = torch.randint(0, 2, (n_rows, n_classes), device=DEVICE, dtype=torch.uint8)
        function = fused_sigmoid.binary_cross_entropy_with_logits
        oracle = reference_sigmoid.binary_cross_entropy_with_logits
    logits.requires_grad_()
    losses = function(logits, target, reduction="none")
    upstream = torch.randn(losses.shape, device=DEVICE, dtype=torch.float16)
    losses.backward(upstream)

    rows = _rows_to_check(n_rows, n_classes)
    expected_input = logits.detach()[rows].double().requires_grad_()
    expected_target = target[rows] if name == "cross_entropy" else target[rows].double()
    expected = oracle(expected_input, expected_target, reduction="none")
    expected.backward(upstream[rows].double())
    assert_close(losses.detach()[rows], expected, torch.float16, f"losses of rows {rows.tolist()}")
    assert_close(logits.grad[rows], expected_input.grad, torch.float16, "gradient of those rows")
