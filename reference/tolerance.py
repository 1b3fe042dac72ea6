"""How close a result must be to the float64 oracle: one table, used by tests/ and bench/.

The measure is normwise: ``max|actual - expected| / max|expected|`` over the finite entries, with
every non-finite entry of the expectation (nan, +inf, -inf) required at the same place in the
result. One number per tensor, so the harness can report it and the tests can assert on it.
"""

from __future__ import annotations

import torch

# Relative error allowed against the float64 oracle, by the dtype the computation ran in.
# fp32 arithmetic lands near 1e-6; fp16 stores 11 significant bits (2^-11 ~ 5e-4) and bf16 8
# (2^-8 ~ 4e-3), so an output rounded to them is a few units of that away from the exact value.
# float64 is for comparing two float64 implementations (reference against torch).
TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 1e-2,
}


def tolerance(dtype: torch.dtype) -> float:
    """The relative error allowed for a computation in ``dtype``."""
    try:
        return TOLERANCE[dtype]
    except KeyError:
        raise ValueError(f"no tolerance for dtype {dtype}; known: {list(TOLERANCE)}") from None


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual - expected| / max|expected|`` in float64 over finite entries of ``expected``.

    Returns ``inf`` when the shapes differ or when a non-finite entry of ``expected`` (nan, +inf,
    -inf) is not matched exactly in ``actual``, or when ``actual`` is non-finite where ``expected``
    is finite. An all-zero ``expected`` gives the absolute error.
    """
    if actual.shape != expected.shape:
        return float("inf")
    actual = actual.detach().to(device="cpu", dtype=torch.float64)
    expected = expected.detach().to(device="cpu", dtype=torch.float64)
    finite = torch.isfinite(expected)
    non_finite_matches = torch.equal(actual[~finite].nan_to_num(), expected[~finite].nan_to_num())
    same_nans = torch.equal(actual[~finite].isnan(), expected[~finite].isnan())
    if not (non_finite_matches and same_nans) or not torch.isfinite(actual[finite]).all():
        return float("inf")
    if not finite.any():
        return 0.0
    difference = (actual[finite] - expected[finite]).abs().max().item()
    scale = expected[finite].abs().max().item()
    return difference / scale if scale > 0 else difference


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "result"
) -> None:
    """Raise ``AssertionError`` if ``actual`` is further from ``expected`` than ``dtype`` allows."""
    error = relative_error(actual, expected)
    allowed = tolerance(dtype)
    if not error <= allowed:
        raise AssertionError(
            f"{what}: relative error {error:.3g} exceeds the {dtype} tolerance {allowed:g} "
            f"(shape {tuple(expected.shape)})"
        )
