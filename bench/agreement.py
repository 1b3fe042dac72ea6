"""Agreement with the float64 reference: the check that gates every timed case.

The checks of ``lossbench.reference.tolerance``, in bounded memory for the largest cases: the
normwise relative error of the loss and of the logits' gradient, and the gradient's elementwise
error (its worst entry, in units of what the dtype allows it), which catches an error confined to
the small off-target entries that the normwise one cannot see. The loss is one number: for it the
normwise check is the elementwise one. For the linear loss the same checks of the loss and of the
gradients of the hidden states and of the classifier, on few enough rows that the float64
reference (which materialises the logits) stays quick.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lossbench.bench.cases import LossSpec
from lossbench.bench.implementations import reference_function

# The float64 agreement check sums the reference loss over row chunks of at most this many
# elements (128 MiB of float64 each), so it fits beside the largest cases.
CHECK_CHUNK_ELEMENTS = 2**24
# The gradient is compared on every row up to this many elements, else on a random sample of
# rows that always includes the last one (where int32 offset overflow would show first).
GRADIENT_CHECK_ELEMENTS = 2**24
# Triton's interpreter runs one program at a time in numpy: it checks agreement on at most this
# many elements (fewer rows of the same class count).
INTERPRETER_ELEMENTS = 2**15
# The linear loss is checked on at most this many multiply-adds of logits, rows x D x V (fewer
# rows, the same D and V, every class and d W included): at CCE's Table 1 shape (D 2304, V 256000)
# that is 116 rows, whose float64 reference (forward and backward, 4e11 flops and 1.4 GB) takes
# milliseconds at an H200's float64 rate (67 TFLOP/s, its specification), where all 8192 rows
# would take 2.9e16 flops (derived, not measured). The quick CPU shapes stay whole. The Triton
# interpreter gets 2^15 logits (rows x V), as for the other losses.
LINEAR_AGREEMENT_MACS = 2**36


@dataclass(frozen=True)
class Agreement:
    """Errors against the float64 reference, and the verdict by the dtype's tolerances.

    ``loss_error`` and ``grad_error``: normwise relative errors, each within ``tolerance``.
    ``grad_elementwise_error``: the gradient's worst entry in units of its elementwise allowance
    (``rtol |expected| + atol max|expected|``), at most 1. The gradient's are None for the forward
    pass; ``gradient_rows`` says on how many rows they were measured (all rows up to
    GRADIENT_CHECK_ELEMENTS elements). For the linear loss ``grad_error`` is the hidden states'
    gradient, ``weight_grad_error`` the classifier's, and ``grad_elementwise_error`` the worse of
    the two gradients' elementwise errors.
    """

    loss_error: float
    grad_error: float | None
    grad_elementwise_error: float | None
    tolerance: float
    gradient_rows: int
    weight_grad_error: float | None = None

    @property
    def passed(self) -> bool:
        errors = [self.loss_error, self.grad_error, self.weight_grad_error]
        normwise = all(error <= self.tolerance for error in errors if error is not None)
        elementwise = self.grad_elementwise_error
        return normwise and (elementwise is None or elementwise <= 1)

    def describe(self) -> str:
        text = f"loss error {self.loss_error:.2g}"
        if self.grad_error is not None:
            text += (
                f", gradient error {self.grad_error:.2g} and elementwise "
                f"{self.grad_elementwise_error:.2g} x allowed ({self.gradient_rows} rows)"
            )
        if self.weight_grad_error is not None:
            text += f", weight gradient error {self.weight_grad_error:.2g}"
        return f"{text}, tolerance {self.tolerance:g}"


def _upcast_target(spec: LossSpec, target: torch.Tensor) -> torch.Tensor:
    return target if spec.family == "softmax" else target.double()


def gradient_rows(batch: int, classes: int, device: torch.device) -> torch.Tensor:
    """Indices of the rows whose gradient is checked: all, or a sorted sample with the last."""
    if batch * classes <= GRADIENT_CHECK_ELEMENTS:
        return torch.arange(batch, device=device)
    sample = max(1, GRADIENT_CHECK_ELEMENTS // classes)
    rows = torch.randperm(batch - 1, device=device)[: sample - 1]
    last = torch.tensor([batch - 1], device=device)
    return torch.cat([rows, last]).sort().values


def check_agreement(
    spec: LossSpec,
    dtype: torch.dtype,
    logits: torch.Tensor,
    target: torch.Tensor,
    loss: torch.Tensor,
    grad: torch.Tensor | None,
    columns: slice | None = None,
) -> Agreement:
    """Compare ``loss`` (and ``grad``, the logits' gradient of the mean loss) with float64.

    The reference runs on the upcast inputs with reduction='sum' over row chunks, divided by the
    mean's denominator: the same mean, in bounded memory. The gradient is compared on
    ``gradient_rows``: the reference gradient of those rows' sum over the same denominator is
    exactly their rows of the mean's gradient. ``columns``: ``grad`` holds only these columns of
    the logits' gradient (a rank's slice of the classes in lossbench.bench.distributed).
    """
    from lossbench.reference.tolerance import elementwise_error, relative_error, tolerance

    reference_sum = reference_function(spec, "sum")
    batch, classes = logits.shape
    denominator = spec.mean_denominator(batch, classes)
    rows_per_chunk = max(1, CHECK_CHUNK_ELEMENTS // classes)
    logits = logits.detach()
    with torch.no_grad():
        total = sum(
            reference_sum(
                logits[start : start + rows_per_chunk].double(),
                _upcast_target(spec, target[start : start + rows_per_chunk]),
            )
            for start in range(0, batch, rows_per_chunk)
        )
    loss_error = relative_error(loss, total / denominator)
    grad_error = grad_elementwise_error = None
    checked_rows = 0
    if grad is not None:
        rows = gradient_rows(batch, classes, logits.device)
        upcast = logits[rows].double().requires_grad_()
        (reference_sum(upcast, _upcast_target(spec, target[rows])) / denominator).backward()
        expected = upcast.grad if columns is None else upcast.grad[:, columns]
        grad_error = relative_error(grad[rows], expected)
        grad_elementwise_error = elementwise_error(grad[rows], expected, dtype)
        checked_rows = len(rows)
    return Agreement(loss_error, grad_error, grad_elementwise_error, tolerance(dtype), checked_rows)


def linear_agreement_rows(batch: int, hidden: int, classes: int, interpreted: bool) -> int:
    """Rows of a linear-loss case its agreement is checked on (``LINEAR_AGREEMENT_MACS``, or
    ``INTERPRETER_ELEMENTS`` logits under the interpreter): at least one, at most ``batch``."""
    budget = (
        INTERPRETER_ELEMENTS // classes
        if interpreted
        else LINEAR_AGREEMENT_MACS // (hidden * classes)
    )
    return max(1, min(batch, budget))


def check_linear_agreement(
    dtype: torch.dtype,
    hidden: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    loss: torch.Tensor,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
) -> Agreement:
    """Compare the linear loss ``loss`` (reduction 'mean') and, when given, the gradients of
    ``hidden`` (N, D) and ``linear_weight`` (V, D) with the float64 reference on the same
    values, every row and every class."""
    from lossbench.reference.linear import linear_cross_entropy
    from lossbench.reference.tolerance import elementwise_error, relative_error, tolerance

    upcast = [hidden.detach().double(), linear_weight.detach().double()]
    wants_grad = grad_hidden is not None
    for tensor in upcast:
        tensor.requires_grad_(wants_grad)
    with torch.set_grad_enabled(wants_grad):
        expected = linear_cross_entropy(*upcast, target)
    grad_error = weight_grad_error = grad_elementwise_error = None
    if wants_grad:
        expected.backward()
        grad_error = relative_error(grad_hidden, upcast[0].grad)
        weight_grad_error = relative_error(grad_weight, upcast[1].grad)
        grad_elementwise_error = max(
            elementwise_error(grad_hidden, upcast[0].grad, dtype),
            elementwise_error(grad_weight, upcast[1].grad, dtype),
        )
    return Agreement(
        relative_error(loss, expected.detach()),
        grad_error,
        grad_elementwise_error,
        tolerance(dtype),
        len(hidden) if wants_grad else 0,
        weight_grad_error,
    )
