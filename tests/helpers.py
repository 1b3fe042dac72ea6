"""What every test file needs: gradients of a loss, upstream gradients, float64 upcasts, the
comparison of a loss and its gradients with a float64 oracle, nan-poisoned allocations (the
``poisoned_allocations`` fixture of tests/conftest.py uses them), and the non-finite logits every
loss is tested on.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from unittest import mock

import torch
from torch import Tensor

# The checkout, for tests that run a subprocess in it (one definition, the harness's).
from lossbench.bench.provenance import REPOSITORY_ROOT
from lossbench.reference.tolerance import assert_close

__all__ = [
    "NON_FINITE_ROWS",
    "PROVENANCE",
    "REPOSITORY_ROOT",
    "assert_matches_float64",
    "benchmark_case",
    "loss_and_gradients",
    "loss_and_named_gradients",
    "nan_poisoned_allocations",
    "non_finite_sigmoid_case",
    "non_finite_softmax_case",
    "upcast",
    "upstream_gradient",
]


def upstream_gradient(loss: Tensor) -> Tensor:
    """A random upstream gradient for ``loss``: signed and non-uniform for an elementwise loss,
    a scalar that is never 1 for a reduced one (so that a backward which skips the scaling by
    the upstream gradient fails)."""
    if loss.dim() == 0:
        return (1.5 + torch.rand((), device=loss.device)).to(loss.dtype)
    return torch.randn(loss.shape, device=loss.device).to(loss.dtype)


def loss_and_gradients(
    function: Callable[..., Tensor],
    input: Tensor,
    target: Tensor,
    upstream: Tensor | None = None,
    *,
    target_grad: bool = False,
    **options: object,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """``function(input, target, **options)``, its gradient w.r.t. ``input``, w.r.t. ``target``
    when ``target_grad`` (else None), and the upstream gradient it was given.

    ``upstream`` None draws one with :func:`upstream_gradient`; pass the returned one to the
    call you compare with, so that both are differentiated alike. The inputs are detached
    first: the caller's tensors are left as they were.
    """
    input = input.detach().requires_grad_()
    target = target.detach().requires_grad_(target_grad)
    loss = function(input, target, **options)
    if upstream is None:
        upstream = upstream_gradient(loss)
    gradients = torch.autograd.grad(loss, (input, target) if target_grad else (input,), upstream)
    return loss, gradients[0], gradients[1] if target_grad else None, upstream


@contextlib.contextmanager
def nan_poisoned_allocations() -> Iterator[None]:
    """Inside, every floating tensor from torch.empty / torch.empty_like starts as nan: an output
    element a kernel forgets to write then shows as a mismatch."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(tensor: Tensor) -> Tensor:
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    with (
        mock.patch.object(torch, "empty", lambda *a, **k: poisoned(empty(*a, **k))),
        mock.patch.object(torch, "empty_like", lambda *a, **k: poisoned(empty_like(*a, **k))),
    ):
        yield


def loss_and_named_gradients(
    function: Callable[..., Tensor],
    differentiable: Mapping[str, Tensor | None],
    upstream: Tensor | None = None,
    **constants: object,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """``function(**differentiable, **constants)``, its gradient w.r.t. each tensor of
    ``differentiable`` by name, and the upstream gradient it was given.

    Each tensor is detached and made a leaf that requires grad (None entries are passed as
    None and get no gradient); ``upstream`` None draws one with :func:`upstream_gradient`.
    """
    leaves = {
        name: None if tensor is None else tensor.detach().requires_grad_()
        for name, tensor in differentiable.items()
    }
    loss = function(**leaves, **constants)
    if upstream is None:
        upstream = upstream_gradient(loss)
    names = [name for name, leaf in leaves.items() if leaf is not None]
    gradients = torch.autograd.grad(loss, [leaves[name] for name in names], upstream)
    return loss, dict(zip(names, gradients, strict=True)), upstream


def upcast(options: Mapping[str, object]) -> dict[str, object]:
    """``options`` with every tensor in float64 (for the float64 oracle's call)."""
    return {
        name: value.double() if isinstance(value, Tensor) and value.is_floating_point() else value
        for name, value in options.items()
    }


def assert_matches_float64(
    function: Callable[..., Tensor],
    oracle: Callable[..., Tensor],
    input: Tensor,
    target: Tensor,
    *,
    dtype: torch.dtype | None = None,
    target_grad: bool = False,
    upstream: Tensor | None = None,
    **options: object,
) -> Tensor:
    """``function(input, target, **options)`` against ``oracle`` on the same values in float64.

    Compares the loss, the gradient w.r.t. ``input`` and, with ``target_grad``, w.r.t. ``target``
    by ``reference.tolerance.assert_close`` for ``dtype`` (``input``'s by default), both checks.
    A floating ``target`` and floating tensors in ``options`` are upcast for the oracle; class
    indices are passed as they are. ``upstream`` None draws one (:func:`upstream_gradient`).
    Returns ``function``'s loss.
    """
    dtype = input.dtype if dtype is None else dtype
    loss, input_grad, target_grad_value, upstream = loss_and_gradients(
        function, input, target, upstream, target_grad=target_grad, **options
    )
    expected_target = target.double() if target.is_floating_point() else target
    expected, expected_input_grad, expected_target_grad, _ = loss_and_gradients(
        oracle,
        input.double(),
        expected_target,
        upstream.double(),
        target_grad=target_grad,
        **upcast(options),
    )
    assert_close(loss, expected, dtype, "loss")
    assert_close(input_grad, expected_input_grad, dtype, "input gradient")
    if target_grad:
        assert_close(target_grad_value, expected_target_grad, dtype, "target gradient")
    return loss


# --- Non-finite logits: the cases every loss is tested on, against torch and kernel against ----
# --- reference ---------------------------------------------------------------------------------

# name: (a row of 4 logits, its target class; -100 is ignored). +inf and -inf at the target and
# elsewhere, two +inf, +inf beside -inf, no finite logit, nan, and +inf in an ignored row.
NON_FINITE_ROWS: dict[str, tuple[list[float], int]] = {
    "+inf at the target": ([math.inf, 0.5, -1.0, 2.0], 0),
    "+inf elsewhere": ([math.inf, 0.5, -1.0, 2.0], 2),
    "-inf at the target": ([-math.inf, 0.5, -1.0, 2.0], 0),
    "-inf elsewhere": ([-math.inf, 0.5, -1.0, 2.0], 2),
    "two +inf": ([math.inf, math.inf, 0.0, 1.0], 3),
    "+inf and -inf": ([math.inf, -math.inf, 0.0, 1.0], 1),
    "all -inf": ([-math.inf] * 4, 1),
    "nan": ([math.nan, 0.5, -1.0, 2.0], 2),
    "+inf, ignored": ([math.inf, 0.5, -1.0, 2.0], -100),
}


def non_finite_softmax_case(name: str, device: str = "cpu") -> tuple[Tensor, Tensor]:
    """float64 logits (3, 4) whose first row is ``NON_FINITE_ROWS[name]`` and whose other rows
    are finite and random (so that a reduced loss shows what one bad row does to it), with
    their class-index targets (3,)."""
    row, target = NON_FINITE_ROWS[name]
    logits = 2 * torch.randn(3, 4, dtype=torch.float64)
    logits[0] = torch.tensor(row, dtype=torch.float64)
    targets = torch.cat([torch.tensor([target]), torch.randint(0, 4, (2,))])
    return logits.to(device), targets.to(device)


def non_finite_sigmoid_case(device: str = "cpu") -> tuple[Tensor, Tensor]:
    """float64 logits (12,) and targets: +inf, -inf and nan each against the targets 0, 1 and
    0.3, then three finite logits."""
    infinities = [math.inf] * 3 + [-math.inf] * 3 + [math.nan] * 3
    logits = torch.tensor(infinities + torch.randn(3).tolist(), dtype=torch.float64)
    targets = torch.tensor([0.0, 1.0, 0.3] * 3 + torch.rand(3).tolist(), dtype=torch.float64)
    return logits.to(device), targets.to(device)


# --- Results files ----------------------------------------------------------------------------

# The provenance of a made-up benchmark run, for tests of the results files and the report.
PROVENANCE = {
    "run_date": "2026-01-01T00:00:00Z",
    "device": "cpu",
    "device_name": "Test CPU",
    "torch": "2.x",
    "triton": "3.x",
    "python": "3.11",
    "git_commit": "abc",
}


def benchmark_case(
    impl: str, batch: int, classes: int, pass_: str = "forward_backward"
) -> dict[str, object]:
    """The case columns of a cross-entropy fp32 case, as ``ResultsFile.record`` takes them."""
    return {
        "loss": "cross_entropy",
        "impl": impl,
        "dtype": "fp32",
        "batch": batch,
        "classes": classes,
        "hidden": 0,
        "pass": pass_,
    }
