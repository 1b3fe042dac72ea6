"""One rule for the focal losses' gamma and alpha, in reference/ and kernels/, for the function
and for the module (at construction), softmax and sigmoid alike (reference/_checks.py).

gamma: a finite number >= 0. alpha: a finite number in [0, 1]; "no weighting" is None for the
softmax loss and a negative number for the sigmoid loss (torchvision's alpha=-1), so a negative
alpha raises in the softmax loss only.
"""

from __future__ import annotations

import math

import pytest
import torch

from lossbench import kernels, reference
from lossbench.kernels._common import KERNEL_DEVICE

DEVICE = KERNEL_DEVICE

# (gamma, alpha) that every focal loss refuses, with the parameter the message names.
REFUSED = [
    (math.nan, 0.25, "gamma"),
    (math.inf, 0.25, "gamma"),
    (-1.0, 0.25, "gamma"),
    (2.0, math.nan, "alpha"),
    (2.0, math.inf, "alpha"),
    (2.0, 1.5, "alpha"),
]
FAMILIES = ["softmax", "sigmoid"]
PACKAGES = {"reference": reference, "kernels": kernels}


def _call(package, family: str, alpha: float, gamma: float) -> torch.Tensor:
    logits = torch.randn(4, 3, device=DEVICE)
    if family == "softmax":
        target = torch.randint(0, 3, (4,), device=DEVICE)
        return package.softmax_focal_loss(logits, target, alpha, gamma)
    target = torch.rand(4, 3, device=DEVICE)
    return package.sigmoid_focal_loss(logits, target, alpha, gamma)


def _construct(package, family: str, alpha: float, gamma: float) -> torch.nn.Module:
    module = package.SoftmaxFocalLoss if family == "softmax" else package.SigmoidFocalLoss
    return module(alpha=alpha, gamma=gamma)


@pytest.mark.parametrize(("gamma", "alpha", "named"), REFUSED)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("package", list(PACKAGES))
def test_refused_by_the_function_and_the_module(
    package: str, family: str, gamma: float, alpha: float, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        _call(PACKAGES[package], family, alpha, gamma)
    with pytest.raises(ValueError, match=named):
        _construct(PACKAGES[package], family, alpha, gamma)


@pytest.mark.parametrize("package", list(PACKAGES))
def test_negative_alpha_means_no_weighting_for_the_sigmoid_loss_only(package: str) -> None:
    losses = PACKAGES[package]
    with pytest.raises(ValueError, match="alpha=None"):
        _call(losses, "softmax", -0.5, 2.0)
    with pytest.raises(ValueError, match="alpha=None"):
        _construct(losses, "softmax", -0.5, 2.0)
    logits, target = torch.randn(4, 3, device=DEVICE), torch.rand(4, 3, device=DEVICE)
    assert torch.equal(
        losses.sigmoid_focal_loss(logits, target, -0.5, 2.0),
        losses.sigmoid_focal_loss(logits, target, -1.0, 2.0),
    )
    _construct(losses, "sigmoid", -1.0, 2.0)


@pytest.mark.parametrize(("gamma", "alpha"), [(0.0, 0.0), (0.5, 1.0), (2.0, 0.25)])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("package", list(PACKAGES))
def test_accepted_at_the_edges(package: str, family: str, gamma: float, alpha: float) -> None:
    assert torch.isfinite(_call(PACKAGES[package], family, alpha, gamma)).all()
    _construct(PACKAGES[package], family, alpha, gamma)


@pytest.mark.parametrize("package", list(PACKAGES))
def test_per_class_alpha_entries_outside_0_1_are_refused(package: str) -> None:
    # The module checks its tensor at construction; the kernel function checks where reading
    # the values costs no host synchronisation (the CPU), the reference always.
    losses = PACKAGES[package]
    alpha = torch.tensor([0.5, 1.5, 0.2], device=DEVICE)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        losses.SoftmaxFocalLoss(alpha=alpha)
    if package == "kernels" and DEVICE != "cpu":
        return
    logits, target = torch.randn(4, 3, device=DEVICE), torch.randint(0, 3, (4,), device=DEVICE)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        losses.softmax_focal_loss(logits, target, alpha)
