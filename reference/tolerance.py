"""How close a result must be to the float64 oracle: one table, used by tests/ and bench/.

Two measures, and a result must pass both (``assert_close`` runs both):

- normwise: ``max|actual - expected| / max|expected|``, one number per tensor against
  ``Tolerance.normwise``. It bounds every error by a share of the tensor's largest entry, so it
  cannot see an error confined to small entries: in a softmax gradient the true class's entry is
  the largest, and an off-target entry 100x smaller may be wrong by 100 % and still pass the bf16
  normwise 1e-2.
- elementwise: every entry within ``rtol * |expected_i| + atol * max|expected| + floor`` of its
  expectation, as in torch's and Liger-Kernel's tests, with ``floor`` twice the dtype's spacing
  below its smallest normal number. ``elementwise_error`` reports the worst entry's error in
  units of what it is allowed: at most 1 passes.

Both require every non-finite entry of the expectation (nan, +inf, -inf) at the same place in the
result, and a finite result wherever the expectation is finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """How far a result computed in one dtype may be from the float64 oracle.

    normwise: allowed ``max|actual - expected| / max|expected|``.
    rtol: allowed elementwise error, relative to the entry's own expectation.
    atol: allowed elementwise error, relative to the tensor's largest expected entry.
    """

    normwise: float
    rtol: float
    atol: float


# By the dtype the computation ran in; float64 is for comparing two float64 implementations
# (reference against torch). u is the unit roundoff: 2^-53 (fp64), 2^-24 (fp32), 2^-11 (fp16),
# 2^-8 (bf16).
#
# normwise: fp32 arithmetic lands near 1e-6; fp16 stores 11 significant bits (u ~ 5e-4) and bf16 8
# (u ~ 4e-3), so a result rounded to them is a few units of that away from the exact value.
#
# rtol, fp16 and bf16: an fp16/bf16 result is rounded once from fp32 (u); a 'mean' or 'sum'
# cross-entropy gradient written over the logits (inplace_backward) under an upstream gradient
# other than 1 twice (stored in the forward pass, rounded again when backward scales it), so up
# to 2u: 2^-10 ~ 9.8e-4 (fp16), 2^-7 ~ 7.8e-3 (bf16), plus the fp32 error below. 1e-3 and 1e-2
# (torch's assert_close uses 1e-3 and 1.6e-2). Every other gradient is rounded once whatever the
# upstream (kernels/softmax.py; tests/test_kernels_rounding.py).
# rtol, fp32: an fp32 exp(t) whose argument t was rounded (x_j - max, or t * log2(e) inside the
# GPU's exp2) has a relative error of |t| u; entries of a softmax or sigmoid gradient that are
# still normal fp32 numbers come from |t| < 88, so up to ~88 u ~ 5e-6 from the argument, as much
# again from the multiply inside exp2, plus an ulp or two of the instruction: 1e-5 (~170 u).
# atol, fp32/fp16/bf16: an entry that is a difference of terms (p_j - eps/C under label smoothing,
# sigmoid(x) - t for a soft target, the z-loss term against the rest) keeps the fp32 rounding
# error of the terms, a few u of the tensor's scale, however small the entry: 1e-6 (~17 u of fp32)
# of the tensor's largest entry. Every kernel computes in fp32, so the three share it (torch's
# tests also use one atol, 1e-5, for all three; absolute there, relative to the largest entry
# here, so that it means the same for a loss, a 'mean' gradient of size 1/N and a scaled one).
# float64: rtol as the normwise 1e-10, atol 1e-13 (~900 u of float64), both loose for two
# float64 implementations of one formula, and kept so: torch's and the reference's formulas differ.
#
# Measured, the whole suite on the 2-core CPU (Triton's interpreter), 3 seeds: at most 0.1 of the
# fp32 allowance, 0.93 of fp16's and 0.73 of bf16's (both the double rounding of a 'sum' gradient
# under an upstream gradient, measured before the kernels rounded such a gradient once), 0.011 of
# float64's; the largest atol any comparison needed was
# 2.8e-8 (fp32, soft-target focal gradients) and 2.6e-17 (float64).
TOLERANCE: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(normwise=1e-10, rtol=1e-10, atol=1e-13),
    torch.float32: Tolerance(normwise=1e-5, rtol=1e-5, atol=1e-6),
    torch.float16: Tolerance(normwise=1e-3, rtol=1e-3, atol=1e-6),
    torch.bfloat16: Tolerance(normwise=1e-2, rtol=1e-2, atol=1e-6),
}

# Below its smallest normal number a dtype keeps a fixed absolute spacing instead of a relative
# one (fp16: 2^-24 ~ 6e-8, reached by a 'mean' gradient over a few thousand elements; fp32 and
# bf16: 1e-45 and 9e-41). Rounded twice (inplace_backward, see rtol above), the second time after
# a scaling by an upstream gradient of up to 3, a result there may be 2 spacings off.
SUBNORMAL_SPACINGS = 2


def _table_entry(dtype: torch.dtype) -> Tolerance:
    try:
        return TOLERANCE[dtype]
    except KeyError:
        raise ValueError(f"no tolerance for dtype {dtype}; known: {list(TOLERANCE)}") from None


def tolerance(dtype: torch.dtype) -> float:
    """The normwise relative error allowed for a computation in ``dtype``."""
    return _table_entry(dtype).normwise


def elementwise_tolerance(dtype: torch.dtype) -> Tolerance:
    """The table's entry for ``dtype``: its ``rtol`` and ``atol`` are the elementwise ones."""
    return _table_entry(dtype)


def subnormal_floor(dtype: torch.dtype) -> float:
    """The absolute error every entry is allowed: SUBNORMAL_SPACINGS spacings of ``dtype``'s
    subnormal numbers (its smallest normal number times its machine epsilon)."""
    info = torch.finfo(dtype)
    return SUBNORMAL_SPACINGS * info.smallest_normal * info.eps


def _finite_pairs(
    actual: torch.Tensor, expected: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The finite entries of ``expected`` and the matching ones of ``actual``, both float64 on
    the CPU; None when the shapes differ, a non-finite entry of ``expected`` is not matched
    exactly, or ``actual`` is non-finite where ``expected`` is finite."""
    if actual.shape != expected.shape:
        return None
    actual = actual.detach().to(device="cpu", dtype=torch.float64)
    expected = expected.detach().to(device="cpu", dtype=torch.float64)
    finite = torch.isfinite(expected)
    non_finite_matches = torch.equal(actual[~finite].nan_to_num(), expected[~finite].nan_to_num())
    same_nans = torch.equal(actual[~finite].isnan(), expected[~finite].isnan())
    if not (non_finite_matches and same_nans) or not torch.isfinite(actual[finite]).all():
        return None
    return actual[finite], expected[finite]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual - expected| / max|expected|`` in float64 over finite entries of ``expected``.

    Returns ``inf`` when the shapes differ or when a non-finite entry of ``expected`` (nan, +inf,
    -inf) is not matched exactly in ``actual``, or when ``actual`` is non-finite where ``expected``
    is finite. An all-zero ``expected`` gives the absolute error.
    """
    pairs = _finite_pairs(actual, expected)
    if pairs is None:
        return float("inf")
    actual, expected = pairs
    if expected.numel() == 0:
        return 0.0
    difference = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    return difference / scale if scale > 0 else difference


def _elementwise_excess(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | None:
    """Each finite entry's ``|actual - expected|`` over what it is allowed; None as in
    ``_finite_pairs``."""
    pairs = _finite_pairs(actual, expected)
    if pairs is None:
        return None
    actual, expected = pairs
    entry = elementwise_tolerance(dtype)
    scale = expected.abs().max() if expected.numel() else expected.new_zeros(())
    allowed = entry.rtol * expected.abs() + entry.atol * scale + subnormal_floor(dtype)
    return (actual - expected).abs() / allowed


def elementwise_error(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> float:
    """The worst entry's ``|actual - expected|`` in units of what ``dtype`` allows it:
    ``rtol * |expected_i| + atol * max|expected| + subnormal_floor(dtype)``. At most 1 passes.

    ``inf`` in the cases where ``relative_error`` is; 0 for tensors without finite entries.
    """
    excess = _elementwise_excess(actual, expected, dtype)
    if excess is None:
        return float("inf")
    return excess.max().item() if excess.numel() else 0.0


def _worst_entry(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> str:
    """Where the elementwise check fails worst, for the assertion message."""
    actual64 = actual.detach().to(device="cpu", dtype=torch.float64)
    expected64 = expected.detach().to(device="cpu", dtype=torch.float64)
    finite = torch.isfinite(expected64)
    excess = torch.zeros_like(expected64)
    excess[finite] = _elementwise_excess(actual, expected, dtype)
    index = tuple(int(i) for i in torch.unravel_index(excess.argmax(), excess.shape))
    return (
        f"worst entry {index}: {actual64[index].item():.6g} against {expected64[index].item():.6g}"
    )


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "result"
) -> None:
    """Raise ``AssertionError`` unless ``actual`` passes both the normwise and the elementwise
    check of ``dtype`` against ``expected`` (see the module docstring)."""
    shape = tuple(expected.shape)
    error = relative_error(actual, expected)
    allowed = tolerance(dtype)
    if not error <= allowed:
        raise AssertionError(
            f"{what}: relative error {error:.3g} exceeds the {dtype} tolerance {allowed:g} "
            f"(shape {shape})"
        )
    excess = elementwise_error(actual, expected, dtype)
    if not excess <= 1:
        entry = elementwise_tolerance(dtype)
        raise AssertionError(
            f"{what}: elementwise error {excess:.3g} times the {dtype} allowance "
            f"rtol {entry.rtol:g} x |expected| + atol {entry.atol:g} x max|expected| "
            f"(shape {shape}; {_worst_entry(actual, expected, dtype)})"
        )
