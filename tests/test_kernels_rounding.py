"""Gradients in fp16 and bf16 are rounded once, whatever the upstream gradient.

A 'mean' or 'sum' loss writes its gradient in the forward pass, for an upstream gradient of 1.
Multiplying that stored 16-bit gradient by another upstream (a loss scale, 1 / accumulation
steps) would round it a second time; the kernels recompute it with the upstream folded in
instead. Measured per element in units of the element's own ulp (the spacing of the dtype at the
float64 value), a correctly rounded gradient is within 0.5 of float64; twice rounded, up to 1.

The fp32 arithmetic before the rounding has its own error, a few fp32 ulps of the terms that
make an entry; where they cancel (sigmoid(x) - t with sigmoid(x) close to t) that can reach half
an fp16 ulp of a small entry, in torch's arithmetic as in ours. So the bound is checked on the
entries within a factor WELL_CONDITIONED of the largest, where that error is below 2^-9 ulp:
every loss, input and target gradients, correctly rounded up to ULP_SLACK, and never farther from
float64 than torch's where torch has the loss."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own spelling)

from lossbench import kernels, reference
from lossbench.kernels._common import KERNEL_DEVICE

from .helpers import loss_and_gradients

DEVICE = KERNEL_DEVICE
# Mantissa bits after the leading one, and the smallest normal exponent (frexp's convention).
MANTISSA_BITS = {torch.float16: 10, torch.bfloat16: 7}
MIN_EXPONENT = {torch.float16: -13, torch.bfloat16: -125}
# Entries at least 1/16 of the largest one: there the fp32 arithmetic's error is below 2^-9 ulp.
WELL_CONDITIONED = 16.0
# That error, with room: a tie it tips the other way must not fail. Double rounding errs by up
# to half an ulp more.
ULP_SLACK = 0.01
# 64 x 80 (COCO's classes): 5120 gradient entries, so that a second rounding shows on some.
SHAPE = (64, 80)


def errors_in_ulps(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> float:
    """max |actual - expected| / ulp(expected) over the well-conditioned entries, the ulp being
    the spacing of ``dtype`` at each float64 value."""
    expected = expected.detach().double()
    _, exponent = torch.frexp(expected)
    exponent = exponent.clamp_min(MIN_EXPONENT[dtype])
    ulp = torch.ldexp(torch.ones_like(expected), exponent - 1 - MANTISSA_BITS[dtype])
    checked = expected.abs() >= expected.abs().max() / WELL_CONDITIONED
    return ((actual.detach().double() - expected).abs() / ulp)[checked].max().item()


# name: (kernel, reference, torch's function (None where torch has none: softmax focal), the kind of
# target, options). A floating target takes a gradient too.
CASES: dict[str, tuple[Callable, Callable, Callable | str | None, str, dict]] = {
    "cross_entropy": (
        kernels.cross_entropy,
        reference.cross_entropy,
        F.cross_entropy,
        "indices",
        {"label_smoothing": 0.1},
    ),
    "cross_entropy, probability targets": (
        kernels.cross_entropy,
        reference.cross_entropy,
        F.cross_entropy,
        "probabilities",
        {},
    ),
    "softmax_focal_loss": (
        kernels.softmax_focal_loss,
        reference.softmax_focal_loss,
        None,
        "indices",
        {"alpha": 0.25, "gamma": 2.0},
    ),
    "binary_cross_entropy_with_logits": (
        kernels.binary_cross_entropy_with_logits,
        reference.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        "soft",
        {},
    ),
    "sigmoid_focal_loss": (
        kernels.sigmoid_focal_loss,
        reference.sigmoid_focal_loss,
        "torchvision",
        "soft",
        {"alpha": 0.25, "gamma": 2.0},
    ),
}


def _torchvision_focal(*args, **kwargs):
    from torchvision.ops import sigmoid_focal_loss  # imported late: it imports triton

    return sigmoid_focal_loss(*args, **kwargs)


def _inputs(target_kind: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    logits = (3 * torch.randn(SHAPE, device=DEVICE)).to(dtype)
    if target_kind == "indices":
        return logits, torch.randint(0, SHAPE[1], SHAPE[:1], device=DEVICE)
    if target_kind == "probabilities":
        return logits, torch.rand(SHAPE, device=DEVICE).softmax(1).to(dtype)
    return logits, torch.rand(SHAPE, device=DEVICE).to(dtype)


@pytest.mark.parametrize("upstream", [-1.32, 1.0, 1024.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_gradients_are_rounded_once(
    case: str, dtype: torch.dtype, reduction: str, upstream: float
) -> None:
    kernel, oracle, torch_loss, target_kind, options = CASES[case]
    logits, target = _inputs(target_kind, dtype)
    target_grad = target.is_floating_point()
    scale = torch.tensor(upstream, device=DEVICE, dtype=dtype)
    ours = loss_and_gradients(
        kernel, logits, target, scale, target_grad=target_grad, reduction=reduction, **options
    )
    expected = loss_and_gradients(
        oracle,
        logits.double(),
        target if target_kind == "indices" else target.double(),
        scale.double(),
        target_grad=target_grad,
        reduction=reduction,
        **options,
    )
    if torch_loss == "torchvision":
        torch_loss = _torchvision_focal
    theirs = None
    if torch_loss is not None:
        theirs = loss_and_gradients(
            torch_loss,
            logits,
            target,
            scale,
            target_grad=target_grad,
            reduction=reduction,
            **options,
        )
    gradients = ("input", "target") if target_grad else ("input",)
    for index, name in enumerate(gradients, start=1):
        gradient_dtype = logits.dtype if name == "input" else target.dtype
        error = errors_in_ulps(ours[index], expected[index], gradient_dtype)
        assert error <= 0.5 + ULP_SLACK, f"{name} gradient: {error:.3f} ulp from float64"
        if theirs is not None:
            torch_error = errors_in_ulps(theirs[index], expected[index], gradient_dtype)
            assert error <= torch_error + ULP_SLACK, (
                f"{name} gradient: {error:.3f} ulp from float64, torch's {torch_error:.3f}"
            )
