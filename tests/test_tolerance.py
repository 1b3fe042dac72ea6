"""reference/tolerance.py: what the normwise and the elementwise checks pass and fail.

The elementwise check exists for one failure the normwise one cannot see: an error confined to
the small entries of a tensor whose largest entry sets the normwise scale. The first test is that
case, in a real cross-entropy gradient.
"""

from __future__ import annotations

import math

import pytest
import torch

from lossbench.reference.softmax import cross_entropy
from lossbench.reference.tolerance import (
    TOLERANCE,
    assert_close,
    elementwise_error,
    relative_error,
    subnormal_floor,
    tolerance,
)

LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)


def test_an_off_target_entry_wrong_by_100_percent_fails_in_bf16() -> None:
    # One row, true class 0 at p = 0.5: its gradient entry p_0 - 1 = -0.5 is the largest. Class 2
    # has p = 0.0049, an entry 100x smaller; doubling it (wrong by 100 %) moves it by 0.0049, which
    # is 0.98 % of the largest entry: within the normwise bf16 tolerance of 1 %.
    probabilities = torch.tensor([[0.5, 0.4951, 0.0049]], dtype=torch.float64)
    logits = probabilities.log().requires_grad_()
    cross_entropy(logits, torch.tensor([0]), reduction="sum").backward()
    expected = logits.grad
    assert expected[0, 2].item() == pytest.approx(-expected[0, 0].item() / 100, rel=0.03)
    wrong = expected.clone()
    wrong[0, 2] *= 2
    wrong = wrong.to(torch.bfloat16)

    assert relative_error(wrong, expected) <= tolerance(torch.bfloat16)  # normwise: passes
    assert elementwise_error(wrong, expected, torch.bfloat16) > 1
    with pytest.raises(AssertionError, match=r"elementwise error .* worst entry \(0, 2\)"):
        assert_close(wrong, expected, torch.bfloat16, "gradient")
    # The same tensor with that entry right, only rounded to bf16, passes both.
    assert_close(expected.to(torch.bfloat16), expected, torch.bfloat16, "gradient")


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_results_rounded_twice_pass(dtype: torch.dtype) -> None:
    """The rounding the table allows for: once to ``dtype``, then again after a scaling by an
    upstream gradient in [1.5, 2.5] (a reduced loss's gradient stored in the forward pass).

    Values span 30 binary orders of magnitude, so that fp16 results include subnormals; 20000 of
    them, so that the worst cases of both roundings turn up.
    """
    expected = torch.randn(20000, dtype=torch.float64) * 2.0 ** torch.randint(-30, 1, (20000,))
    upstream = 1.5 + torch.rand(())
    stored = expected.to(dtype)
    actual = (stored.float() * upstream).to(dtype)
    assert_close(actual, expected * upstream.double(), dtype, "twice rounded")


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_an_error_of_twice_rtol_fails_down_to_the_atol_floor(dtype: torch.dtype) -> None:
    """rtol binds in every entry down to 10 x atol / rtol of the largest one (fp32: 1, fp16:
    1e-2, bf16: 1e-3): a 2 x rtol error fails in the largest entry and in that small one."""
    entry = TOLERANCE[dtype]
    small = 10 * entry.atol / entry.rtol
    for index in (0, 1):
        expected = torch.tensor([1.0, small, -0.5], dtype=torch.float64)
        actual = expected.clone()
        actual[index] *= 1 + 2 * entry.rtol
        assert elementwise_error(actual, expected, dtype) > 1.5


def test_atol_is_relative_to_the_largest_entry() -> None:
    """Scaling actual and expected together (a 'mean' over more elements, an upstream gradient)
    leaves the elementwise error unchanged, floors at atol x the largest entry included."""
    expected = torch.tensor([1.0, 0.0, 3e-7, -0.25], dtype=torch.float64)
    actual = expected + torch.tensor([0.0, 8e-7, 8e-7, 0.0], dtype=torch.float64)
    errors = [
        elementwise_error(actual * scale, expected * scale, torch.float32)
        for scale in (1.0, 1e-6, 1e6)
    ]
    assert errors[0] == pytest.approx(0.8, rel=1e-6)  # 8e-7 against atol 1e-6 x 1.0
    assert errors == pytest.approx([errors[0]] * 3, rel=1e-6)


def test_fp16_subnormals_pass_by_their_spacing() -> None:
    """fp16 keeps an absolute spacing of 2^-24 below 2^-14: such results pass, one spacing off."""
    spacing = 2.0**-24
    assert subnormal_floor(torch.float16) == 2 * spacing
    expected = torch.tensor([1e-3, 3.3e-7, 1.1e-8], dtype=torch.float64)
    actual = expected.to(torch.float16)
    assert_close(actual, expected, torch.float16, "fp16 subnormals")
    off_by_three_spacings = actual.double() + torch.tensor([0.0, 3 * spacing, 0.0])
    assert elementwise_error(off_by_three_spacings, expected, torch.float16) > 1


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        ([1.0, math.inf], [1.0, math.inf]),
        ([math.nan, 2.0], [math.nan, 2.0]),
        ([-math.inf, 0.5], [-math.inf, 0.5]),
        ([0.0, 0.0], [0.0, 0.0]),
    ],
)
def test_non_finite_entries_at_the_same_places_pass(actual, expected) -> None:
    actual = torch.tensor(actual)
    expected = torch.tensor(expected, dtype=torch.float64)
    assert relative_error(actual, expected) == 0.0
    assert elementwise_error(actual, expected, torch.float32) == 0.0


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        ([1.0, 2.0], [1.0, math.inf]),  # inf expected, finite found
        ([1.0, -math.inf], [1.0, math.inf]),  # the wrong infinity
        ([1.0, math.inf], [1.0, 2.0]),  # inf found, finite expected
        ([math.nan, 2.0], [1.0, 2.0]),  # nan found
        ([1.0, 2.0], [math.nan, 2.0]),  # nan expected, a number found
        ([1.0, 2.0, 3.0], [1.0, 2.0]),  # another shape
    ],
)
def test_non_finite_or_shape_mismatches_fail_both_checks(actual, expected) -> None:
    actual = torch.tensor(actual)
    expected = torch.tensor(expected, dtype=torch.float64)
    assert relative_error(actual, expected) == math.inf
    assert elementwise_error(actual, expected, torch.float32) == math.inf
    with pytest.raises(AssertionError, match="relative error inf"):
        assert_close(actual, expected, torch.float32)


def test_unknown_dtype_raises() -> None:
    with pytest.raises(ValueError, match=r"no tolerance for dtype torch\.int64"):
        tolerance(torch.int64)
